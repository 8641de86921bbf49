"""The verifier service image (deploy/server) run the way the Kubernetes manifest
(deploy/k8s/verifier.yaml) says: its capabilities, no seccomp profile, its command, not
privileged. It answers real cases over loopback, contains a fork bomb, and drains on stop."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import nobody_processes

from rlfleet.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "deploy" / "k8s" / "verifier.yaml"
MATH_SET = REPO / "tests" / "data" / "math_symbolic.jsonl"
RLFLEET = [sys.executable, "-m", "rlfleet.cli"]

pytestmark = pytest.mark.docker


def manifest() -> dict[str, Any]:
    docs = {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}
    return docs


def container_spec() -> dict[str, Any]:
    pod = manifest()["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return dict(container)


def test_manifest_is_consistent_with_the_cli_and_itself() -> None:
    docs = manifest()
    deployment, service = docs["Deployment"], docs["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["clusterIP"] == "None"  # headless: round_robin sees every pod
    c = container_spec()
    args = build_parser().parse_args(c["args"])  # exits (fails) on an unknown flag
    assert (args.command, args.backend, args.host) == ("serve", "local", "0.0.0.0")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": args.port, "metrics": args.metrics_port}
    assert c["readinessProbe"]["grpc"] == {"port": args.port, "service": "rlfleet.v1.Verifier"}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert "privileged" not in c["securityContext"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 30  # room to drain calls in flight


@pytest.fixture(scope="module")
def image() -> str:
    proc = subprocess.run(
        [str(REPO / "deploy" / "server" / "build.sh"), "rlfleet/verifier:test"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(image: str) -> Iterator[tuple[str, str]]:
    """(container name, target): the image, started as the manifest starts it, on loopback."""
    c = container_spec()
    sec = c["securityContext"]
    assert sec["seccompProfile"] == {"type": "Unconfined"}
    port = free_port()
    args = list(c["args"])
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    args[args.index("--metrics-port") + 1] = "0"
    args[args.index("--workers") + 1] = "2"
    name = f"rlfleet-verifier-test-{port}"
    run = [
        "docker", "run", "-d", "--name", name, "--network", "host",
        *[f"--cap-drop={x}" for x in sec["capabilities"]["drop"]],
        *[f"--cap-add={x}" for x in sec["capabilities"]["add"]],
        "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
        "--memory", "2g", "--pids-limit", "512",
        image, *args,
    ]  # fmt: skip
    subprocess.run(run, check=True, capture_output=True, timeout=60)
    try:
        deadline = time.monotonic() + 60
        logs = ""
        while "listening on" not in logs and time.monotonic() < deadline:
            time.sleep(0.2)
            logs = subprocess.run(
                ["docker", "logs", name], capture_output=True, text=True, timeout=30
            ).stderr
        assert "listening on" in logs, logs
        yield name, f"127.0.0.1:{port}"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def test_image_serves_cases_contains_a_fork_bomb_and_drains(
    server: tuple[str, str], tmp_path: Path
) -> None:
    name, target = server
    cases = (REPO / "examples" / "cases.jsonl").read_text().splitlines()
    bomb = {
        "id": "bomb",
        "kind": "code",
        "language": "python",
        "code": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "tests": [{"stdin": "", "stdout": ""}],
        "time_limit_s": 1,
    }
    # Correct LaTeX that only the symbolic path proves: the image has the declared
    # dependencies only, as a deployed fleet does.
    math = [json.loads(line) for line in MATH_SET.read_text().splitlines()]
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join([*cases, json.dumps(bomb), *map(json.dumps, math)]) + "\n")
    proc = subprocess.run(
        [*RLFLEET, "verify", str(path), "--server", target],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {r["id"]: r["verdict"] for r in map(json.loads, proc.stdout.splitlines())}
    assert got == {
        "py-sum-ac": "AC",
        "py-sum-wa": "WA",
        "py-loop-tle": "TLE",
        "py-bomb-mle": "MLE",
        "py-syntax-ce": "CE",
        "py-call-ac": "AC",
        "cpp-sum-ac": "AC",
        "cpp-float-ac": "AC",
        "math-frac": "AC",
        "math-hedge": "WA",
        "bomb": got["bomb"],
        **{m["id"]: m["expect"] for m in math},
    }
    assert got["bomb"] in ("TLE", "RE"), got["bomb"]
    assert nobody_processes() == []
    # `docker stop` sends SIGTERM: the server drains and exits cleanly.
    subprocess.run(["docker", "stop", "-t", "60", name], check=True, capture_output=True)
    state = subprocess.run(
        ["docker", "inspect", name, "--format", "{{.State.ExitCode}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert state.stdout.strip() == "0"
