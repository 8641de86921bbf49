"""The learner image (deploy/learner): built from this checkout's wheels with no package index,
it holds the CPU torch build, torchrun and the learner, runs `rlfleet` as a non-root user with
the shipped sets in its working directory, and trains against a fleet outside it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlfleet.learner.fleet import Child, start_child, stop_child, wait_listening

REPO = Path(__file__).resolve().parent.parent
RLFLEET = [sys.executable, "-m", "rlfleet.cli"]

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def image() -> str:
    proc = subprocess.run(
        [str(REPO / "deploy" / "learner" / "build.sh"), "rlfleet/learner:test"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_image_holds_cpu_torch_torchrun_and_the_shipped_sets_and_drops_root(image: str) -> None:
    probe = (
        "import json, os, shutil, torch, rlfleet.learner.loop, rlfleet.learner.metrics\n"
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda,"
        " 'uid': os.getuid(), 'torchrun': shutil.which('torchrun'),"
        " 'sets': sorted(os.listdir('examples/data'))}))"
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
    assert got["torchrun"] == "/opt/rlfleet/bin/torchrun"
    assert got["sets"] == sorted(p.name for p in (REPO / "examples" / "data").iterdir())
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", image, "train", "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--resume" in proc.stdout


@pytest.fixture
def fleet(tmp_path: Path, require_root: None) -> Iterator[tuple[Path, str, str]]:
    """(model dir, rollout target, verifier target): a sandbox and a rollout server on the
    host's loopback, serving a tiny model the container mounts too."""
    model = tmp_path / "model"
    made = subprocess.run(
        [*RLFLEET, "model", "init", "--preset", "tiny", str(model)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    subprocess.run(["chmod", "-R", "a+rX", str(model)], check=True)
    children: list[Child] = []
    try:
        for name, args in (
            ("sandbox", ["serve", "sandbox", "--workers", "1"]),
            ("rollout", ["serve", "rollout", "--engine", "torch", "--model", str(model)]),
        ):
            children.append(start_child(name, args, tmp_path / f"{name}.log", tmp_path))
        sandbox, rollout = (asyncio.run(wait_listening(c, 120)) for c in children)
        yield model, rollout, sandbox
    finally:
        for child in reversed(children):
            stop_child(child)


def test_image_trains_against_a_fleet_outside_it(
    image: str, fleet: tuple[Path, str, str], tmp_path: Path
) -> None:
    model, rollout, verifier = fleet
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o777)  # the image's uid writes the run there
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "host", "--memory", "4g",
         "-v", f"{model}:/models/policy:ro", "-v", f"{runs}:/runs",
         image, "train", "--run-dir", "/runs/run", "--steps", "2",
         "--rollout", rollout, "--verifier", verifier, "model=/models/policy",
         "rollout.prompts_per_step=4", "rollout.n=4"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (runs / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1]
    assert "run dir: /runs/run" in proc.stdout
