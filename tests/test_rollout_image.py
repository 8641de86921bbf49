"""The rollout service image (deploy/rollout): built from this checkout's wheels with no
package index, it holds the CPU torch build and the `[rollout]` extra, runs `rlfleet` as a
non-root user, and serves a tiny model the way its default command says."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "deploy" / "rollout" / "Dockerfile"
RLFLEET = [sys.executable, "-m", "rlfleet.cli"]

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def image() -> str:
    proc = subprocess.run(
        [str(REPO / "deploy" / "rollout" / "build.sh"), "rlfleet/rollout:test"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_image_holds_cpu_torch_and_the_rollout_extra_and_drops_root(image: str) -> None:
    probe = (
        "import json, os, torch, transformers, safetensors, tokenizers, smg_grpc_proto\n"
        "import rlfleet.rollout.engine, rlfleet.rollout.metrics\n"
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda,"
        " 'uid': os.getuid()}))"
    )
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "/opt/rlfleet/bin/python",
         image, "-c", probe],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["torch"].endswith("+cpu") and got["cuda"] is None, got
    assert got["uid"] != 0
    # The entrypoint is rlfleet's CLI.
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", image, "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "serve" in proc.stdout


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dockerfile_cmd() -> list[str]:
    (line,) = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("CMD ")]
    return list(json.loads(line.removeprefix("CMD ")))


@pytest.fixture
def served(image: str, tmp_path: Path) -> Iterator[tuple[str, int, int]]:
    """(container name, gRPC port, metrics port): the image's own command on a tiny model
    mounted where the command looks, on loopback."""
    model = tmp_path / "model"
    made = subprocess.run(
        [*RLFLEET, "model", "init", "--preset", "tiny", str(model)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    # The image runs as a non-root uid: the model must be readable by anyone.
    subprocess.run(["chmod", "-R", "a+rX", str(model)], check=True)
    args = dockerfile_cmd()
    port, metrics = free_port(), free_port()
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    args[args.index("--metrics-port") + 1] = str(metrics)
    name = f"rlfleet-rollout-test-{port}"
    run = [
        "docker", "run", "-d", "--name", name, "--network", "host", "--memory", "4g",
        "-v", f"{model}:{args[args.index('--model') + 1]}:ro",
        image, *args,
    ]  # fmt: skip
    subprocess.run(run, check=True, capture_output=True, timeout=60)
    try:
        yield name, port, metrics
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def test_image_serves_a_tiny_model_and_drains_on_stop(served: tuple[str, int, int]) -> None:
    """Needs `rlfleet model init` and `rlfleet serve rollout` (merged from the engine's and
    the service's branches)."""
    name, port, metrics = served
    deadline = time.monotonic() + 120
    status = None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and status != health_pb2.HealthCheckResponse.SERVING:
            try:
                reply = health.Check(
                    health_pb2.HealthCheckRequest(service="rlfleet.v1.Rollout"), timeout=5
                )
                status = reply.status
            except grpc.RpcError:
                time.sleep(0.5)
    logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr
    assert status == health_pb2.HealthCheckResponse.SERVING, logs[-3000:]
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read()
    assert b"rlfleet_rollout_policy_version 0.0" in body
    # `docker stop` sends SIGTERM: the server drains and exits cleanly.
    subprocess.run(["docker", "stop", "-t", "60", name], check=True, capture_output=True)
    state = subprocess.run(
        ["docker", "inspect", name, "--format", "{{.State.ExitCode}}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert state.stdout.strip() == "0", logs[-3000:]
