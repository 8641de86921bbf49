"""The learner's deploy pieces stay in step with its metrics, its config and each other:
Prometheus rules (promtool unit tests, and a real Prometheus scraping live learner metrics
and answering every dashboard query)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from harness import dashboard_exprs
from learner_fakes import step_record
from prometheus_client import CollectorRegistry, start_http_server
from promlive import prom_query, prometheus

from rlfleet.learner.metrics import LearnerMetrics

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "rlfleet-learner.rules.yml"
DASHBOARD = "rlfleet-learner"
JOB = "rlfleet-learner"  # the scrape job the rules expect


# --- Prometheus rules and the dashboard ------------------------------------------------------


def test_rules_pass_promtool_checks_and_unit_tests() -> None:
    for args in (
        ["check", "rules", RULES.name],
        ["test", "rules", "rlfleet-learner.rules.test.yml"],
    ):
        proc = subprocess.run(
            ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def exported_series() -> set[str]:
    registry = CollectorRegistry()
    LearnerMetrics(registry, max_staleness=0)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {m.name + s for m in registry.collect() for s in suffixes[m.type]}


def recorded_names() -> set[str]:
    return set(re.findall(r"record: (\S+)", RULES.read_text()))


def test_rules_and_dashboard_use_only_exported_or_recorded_series() -> None:
    queries = "\n".join(dashboard_exprs(DASHBOARD))
    used = set(re.findall(r"\brlfleet[:_][a-z0-9_:]+", RULES.read_text() + "\n" + queries))
    assert used - (exported_series() | recorded_names()) == set()
    assert recorded_names() <= set(re.findall(r"\brlfleet:[a-z0-9_:]+", queries))
    # Every metric of the learner is looked at somewhere.
    assert {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported_series()} <= {
        re.sub(r"_(bucket|sum|count)$", "", n) for n in used
    }


@contextlib.contextmanager
def live_learner_metrics() -> Iterator[int]:
    """The learner's metrics on a loopback port, a healthy asynchronous run's steps coming
    in (the learner itself is not needed to check the rules and the dashboard)."""
    registry = CollectorRegistry()
    m = LearnerMetrics(registry, max_staleness=1)
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    stop = threading.Event()

    def exercise() -> None:
        step = 0
        while True:
            m.observe(
                step_record(
                    step=step,
                    staleness=step % 2,
                    reward_mean=0.2 + (step % 10) / 20,
                    train={
                        "loss": 0.1,
                        "mismatch_abs_mean": 0.01,
                        "mismatch_abs_max": 0.2,
                        "mismatch_ratio_mean": 1.0,
                    },
                )
            )
            step += 1
            if stop.wait(0.05):
                return

    worker = threading.Thread(target=exercise, daemon=True)
    worker.start()
    try:
        yield int(httpd.server_port)
    finally:
        stop.set()
        worker.join(5)
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_a_real_prometheus_answers_every_dashboard_query_from_live_metrics(
    tmp_path: Path,
) -> None:
    queries = dashboard_exprs(DASHBOARD)
    with live_learner_metrics() as port, prometheus(tmp_path, RULES, JOB, port) as web:
        # Rates need two scrapes, the recorded series a rule evaluation after them.
        deadline = time.monotonic() + 60
        empty = queries
        while empty and time.monotonic() < deadline:
            time.sleep(1)
            with contextlib.suppress(OSError):
                empty = [q for q in queries if not prom_query(web, q)]
        assert empty == [], f"no data for {empty}"
        (up,) = prom_query(web, f'up{{job="{JOB}"}}')
        assert up["value"][1] == "1"
        (version,) = prom_query(web, "rlfleet_learner_policy_version")
        assert float(version["value"][1]) > 1
        # A healthy learner trips no alert, not even a pending one (the rules are loaded:
        # their recorded series answered above).
        alerts = prom_query(web, "ALERTS")
        assert alerts == [], [a["metric"] for a in alerts]
