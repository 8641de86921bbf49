"""The rollout service's deploy pieces stay in step with its metrics, its CLI and themselves:
Prometheus rules (promtool unit tests, and a real Prometheus scraping live rollout metrics
and answering every dashboard query), the image's Dockerfile and the Kubernetes manifest."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from harness import dashboard_exprs
from prometheus_client import CollectorRegistry, start_http_server
from promlive import prom_query, prometheus

from rlfleet.cli import build_parser
from rlfleet.rollout.metrics import RolloutMetrics

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "rlfleet-rollout.rules.yml"
MANIFEST = REPO / "deploy" / "k8s" / "rollout.yaml"
DOCKERFILE = REPO / "deploy" / "rollout" / "Dockerfile"
JOB = "rlfleet-rollout"  # the scrape job the rules expect


def test_rules_pass_promtool_checks_and_unit_tests() -> None:
    for args in (
        ["check", "rules", RULES.name],
        ["test", "rules", "rlfleet-rollout.rules.test.yml"],
    ):
        proc = subprocess.run(
            ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def exported_series() -> set[str]:
    registry = CollectorRegistry()
    RolloutMetrics(registry)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {m.name + s for m in registry.collect() for s in suffixes[m.type]}


def recorded_names() -> set[str]:
    return set(re.findall(r"record: (\S+)", RULES.read_text()))


def test_rules_and_dashboard_use_only_exported_or_recorded_series() -> None:
    queries = "\n".join(dashboard_exprs("rlfleet-rollout"))
    used = set(re.findall(r"\brlfleet[:_][a-z0-9_:]+", RULES.read_text() + "\n" + queries))
    assert used - (exported_series() | recorded_names()) == set()
    assert recorded_names() <= set(re.findall(r"\brlfleet:[a-z0-9_:]+", queries))
    # Every metric of the service is looked at somewhere.
    assert {re.sub(r"_(bucket|sum|count)$", "", n) for n in exported_series()} <= {
        re.sub(r"_(bucket|sum|count)$", "", n) for n in used
    }


# --- a real Prometheus ---------------------------------------------------------------------


@contextlib.contextmanager
def live_rollout_metrics() -> Iterator[int]:
    """The rollout service's metrics on a loopback port, every one of them moving, as a busy
    server's are (the service itself is not needed to check the rules and dashboard)."""
    registry = CollectorRegistry()
    m = RolloutMetrics(registry)
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    stop = threading.Event()

    def exercise() -> None:
        i = 0
        while not stop.wait(0.05):
            i += 1
            m.tokens.inc(32)
            m.running.set(6 + i % 3)
            m.queued.set(i % 4)
            m.requests.set(2)
            m.first_token.observe(0.02 + (i % 5) / 100)
            m.completions.labels(finish_reason="stop", scored="true").inc()
            m.completions.labels(finish_reason="length", scored="false").inc()
            m.verifier_seconds.observe(0.01 + (i % 7) / 100)
            if i % 50 == 0:  # 2 %: under the alert's 5 %
                m.verifier_errors.inc()
                m.completions.labels(finish_reason="stop", scored="false").inc()
            if i % 20 == 0:  # a weight update
                m.update_started.set_to_current_time()
                m.update_seconds.labels(stage="receive").observe(0.3)
                m.update_seconds.labels(stage="apply").observe(0.05)
                m.update_bytes.inc(4 << 20)
                m.updates.labels(result="applied").inc()
                m.version.inc()
                m.update_started.set(0)

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
    queries = dashboard_exprs("rlfleet-rollout")
    with live_rollout_metrics() as port, prometheus(tmp_path, RULES, JOB, port) as web:
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
        (version,) = prom_query(web, "rlfleet_rollout_policy_version")
        assert float(version["value"][1]) > 0
        # A healthy server trips no alert, not even a pending one (the rules are loaded:
        # their recorded series answered above).
        alerts = prom_query(web, "ALERTS")
        assert alerts == [], [a["metric"] for a in alerts]


# --- the image and the Kubernetes manifest ---------------------------------------------------


def dockerfile_cmd() -> list[str]:
    (line,) = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("CMD ")]
    return list(json.loads(line.removeprefix("CMD ")))


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_dockerfile_runs_rlfleet_not_as_root_with_its_model_mounted() -> None:
    text = DOCKERFILE.read_text()
    lines = text.splitlines()
    assert 'ENTRYPOINT ["/opt/rlfleet/bin/rlfleet"]' in lines
    assert "ARG BASE=debian:bookworm-slim" in lines  # build.sh passes BASE
    # The final stage drops root, and installs with no package index (build.sh's wheels).
    final = text[text.rindex("\nFROM ") :]
    assert re.search(r"^USER [1-9]", final, re.M)
    assert "--no-index" in text and "'rlfleet[rollout]'" in text
    cmd = dockerfile_cmd()
    assert cmd[:2] == ["serve", "rollout"]
    assert (flag(cmd, "--engine"), flag(cmd, "--device"), flag(cmd, "--host")) == (
        "torch",
        "cpu",
        "0.0.0.0",
    )
    assert flag(cmd, "--model") == "/models/policy"


def manifest() -> dict[str, Any]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}


def container(docs: dict[str, Any]) -> dict[str, Any]:
    (c,) = docs["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    return dict(c)


def test_manifest_is_consistent_with_itself_and_the_image() -> None:
    docs = manifest()
    sts, service = docs["StatefulSet"], docs["Service"]
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]  # stable pod DNS names
    assert service["spec"]["clusterIP"] == "None"  # headless: round_robin sees every pod
    c = container(docs)
    args = c["args"]
    assert args[:2] == ["serve", "rollout"]
    port, metrics = int(flag(args, "--port")), int(flag(args, "--metrics-port"))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": port, "metrics": metrics}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert {p["port"] for p in service["spec"]["ports"]} == {port, metrics}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(metrics)
    assert c["readinessProbe"]["grpc"] == {"port": port, "service": "rlfleet.v1.Rollout"}
    assert c["livenessProbe"]["grpc"]["port"] == port
    assert c["startupProbe"]["grpc"]["port"] == port
    # One GPU per pod, on nodes that have one.
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert (flag(args, "--device"), flag(args, "--dtype")) == ("cuda", "bfloat16")
    spec = pod["spec"]
    assert spec["nodeSelector"] and spec["tolerations"]
    # The model directory the server loads is the mounted volume, and every mount has one.
    volumes = {v["name"] for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts[flag(args, "--model")] in volumes
    assert set(mounts.values()) <= volumes
    assert spec["terminationGracePeriodSeconds"] >= 120  # room to drain long generations
    assert c["securityContext"]["runAsNonRoot"] is True
    # The image's defaults agree with the manifest's ports and model path.
    cmd = dockerfile_cmd()
    assert (int(flag(cmd, "--port")), int(flag(cmd, "--metrics-port"))) == (port, metrics)
    assert flag(cmd, "--model") == flag(args, "--model")
    # Clients reach the verifier by the verifier manifest's headless Service.
    assert flag(args, "--verifier").startswith("dns:///rlfleet-verifier.")


def test_manifest_and_image_commands_parse_with_the_cli() -> None:
    """Needs the `serve rollout` subcommand in rlfleet/cli.py (merged from the service's
    branch); until then argparse exits 2 here ("invalid choice: 'rollout'")."""
    parser = build_parser()
    for argv in (container(manifest())["args"], dockerfile_cmd()):
        args = parser.parse_args(argv)  # exits (fails the test) on an unknown flag
        assert (args.command, args.service) == ("serve", "rollout")
        assert (args.port, args.metrics_port) == (50052, 9401)
