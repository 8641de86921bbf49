"""The learner's Prometheus metrics: what a step's record sets in the registry, the HTTP
endpoint `rlfleet train` serves them on (metrics_port), and a real run scraped mid-way."""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from learner_fakes import step_record
from prometheus_client import CollectorRegistry

from rlfleet.learner.config import ConfigError, load_config
from rlfleet.learner.metrics import LearnerMetrics, Unobserved, serve_metrics

RLFLEET = [sys.executable, "-m", "rlfleet.cli"]


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    assert got is not None, f"{name}{labels} is not exported"
    return got


def test_a_step_record_sets_every_metric() -> None:
    registry = CollectorRegistry()
    metrics = LearnerMetrics(registry, max_staleness=2)
    started = value(registry, "rlfleet_learner_last_step_timestamp_seconds")
    assert abs(started - time.time()) < 60  # the stall alert counts from the start
    assert math.isnan(value(registry, "rlfleet_learner_reward_mean"))
    assert value(registry, "rlfleet_learner_samples_total", scored="false") == 0
    metrics.observe(step_record())
    metrics.observe(step_record(step=5, reward_mean=0.75, push_bytes=4096, tokens=80))
    v = lambda name, **labels: value(registry, name, **labels)  # noqa: E731
    assert v("rlfleet_learner_steps_total") == 2
    assert v("rlfleet_learner_policy_version") == 6  # after step 5, version 6 is pushed
    assert v("rlfleet_learner_reward_mean") == 0.75
    assert (v("rlfleet_learner_reward_min"), v("rlfleet_learner_reward_max")) == (0.0, 1.0)
    assert v("rlfleet_learner_accuracy_mean") == 0.5
    assert v("rlfleet_learner_samples_total", scored="true") == 12
    assert v("rlfleet_learner_samples_total", scored="false") == 4
    assert v("rlfleet_learner_tokens_total") == 200
    assert v("rlfleet_learner_step_tokens_per_second") == 60
    assert v("rlfleet_learner_step_seconds_sum") == 4.0
    for phase, seconds in (("generate", 0.5), ("reward", 0.75), ("train", 0.5), ("push", 0.25)):
        assert v("rlfleet_learner_phase_seconds_sum", phase=phase) == 2 * seconds
        assert v("rlfleet_learner_phase_seconds_count", phase=phase) == 2
    assert v("rlfleet_learner_weight_push_bytes_total") == 8192
    assert v("rlfleet_learner_weight_push_failures_total") == 0
    # Synchronous: every sample is of the version trained on.
    assert v("rlfleet_learner_sample_staleness_versions_count") == 16
    assert v("rlfleet_learner_sample_staleness_versions_bucket", le="0.0") == 16
    assert v("rlfleet_learner_staleness_versions") == 0
    assert v("rlfleet_learner_max_staleness_versions") == 2
    assert v("rlfleet_learner_logprob_mismatch", stat="abs_mean") == 0.01
    assert v("rlfleet_learner_logprob_mismatch", stat="abs_max") == 0.5
    assert math.isnan(v("rlfleet_learner_logprob_mismatch", stat="ratio_mean"))  # not reported
    assert (v("rlfleet_learner_loss"), v("rlfleet_learner_grad_norm")) == (-0.125, 0.5)
    assert v("rlfleet_learner_learning_rate") == 1e-3
    assert v("rlfleet_learner_last_step_timestamp_seconds") >= started


def test_a_step_without_reward_reads_nan_and_staleness_counts_per_sample() -> None:
    registry = CollectorRegistry()
    metrics = LearnerMetrics(registry, max_staleness=1)
    metrics.observe(step_record(reward_mean=None, reward_min=None, reward_max=None, scored=0))
    assert math.isnan(value(registry, "rlfleet_learner_reward_mean"))
    assert math.isnan(value(registry, "rlfleet_learner_reward_max"))
    assert value(registry, "rlfleet_learner_samples_total", scored="false") == 8
    metrics.observe(step_record(staleness=2, sample_staleness=[0, 1, 1, 2], push_failures=1))
    staleness = "rlfleet_learner_sample_staleness_versions_bucket"
    # 8 samples of the first step at 0, then 0, 1, 1, 2.
    assert value(registry, staleness, le="0.0") == 9
    assert value(registry, staleness, le="1.0") == 11
    assert value(registry, staleness, le="2.0") == 12
    assert value(registry, "rlfleet_learner_staleness_versions") == 2
    assert value(registry, "rlfleet_learner_weight_push_failures_total") == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    return str(urllib.request.urlopen(url, timeout=5).read().decode())


async def test_metrics_are_served_over_http_for_the_block() -> None:
    port = free_port()
    async with serve_metrics(port, "127.0.0.1", max_staleness=0) as metrics:
        assert isinstance(metrics, LearnerMetrics)
        metrics.observe(step_record())
        body = await asyncio.to_thread(scrape, port)
    assert "rlfleet_learner_steps_total 1.0" in body
    assert "rlfleet_learner_policy_version 5.0" in body
    assert 'rlfleet_learner_phase_seconds_count{phase="push"} 1.0' in body
    assert "rlfleet_learner_max_staleness_versions 0.0" in body
    with pytest.raises(urllib.error.URLError):
        scrape(port)  # closed with the block


@pytest.mark.parametrize(("port", "serve"), [(None, True), (0, True), (1, False)])
async def test_metrics_off_serve_nothing(port: int | None, serve: bool) -> None:
    async with serve_metrics(port, "127.0.0.1", max_staleness=0, serve=serve) as metrics:
        assert isinstance(metrics, Unobserved)
        metrics.observe(step_record())


def test_metrics_port_in_the_train_config() -> None:
    config = load_config(None, ["metrics_port=9402", "metrics_host=0.0.0.0"])
    assert (config.metrics_port, config.metrics_host) == (9402, "0.0.0.0")
    assert load_config(None).metrics_port is None
    with pytest.raises(ConfigError, match="metrics_port"):
        load_config(None, ["metrics_port=70000"])


def test_a_training_run_serves_its_metrics(tmp_path: Path, require_root: None) -> None:
    """`rlfleet train metrics_port=P`: the port answers while the run goes, with its steps."""
    run_dir, port = tmp_path / "run", free_port()
    small = ["rollout.prompts_per_step=4", "rollout.n=4", "fleet.sandbox_workers=1"]
    proc = subprocess.Popen(
        [*RLFLEET, "train", "--run-dir", str(run_dir), "--steps", "1000", *small,
         f"metrics_port={port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        body = ""
        while "rlfleet_learner_steps_total 0.0" in body or "steps_total" not in body:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"no step served in 180 s: {body[-2000:]}"
            time.sleep(0.2)
            try:
                body = scrape(port)
            except OSError:
                continue
        assert 'rlfleet_learner_samples_total{scored="true"}' in body
        assert "rlfleet_learner_weight_push_bytes_total 0.0" not in body
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
