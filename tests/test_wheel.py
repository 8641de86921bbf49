"""The wheel as a user installs it: built from this tree, installed with no extras in a fresh
virtualenv, run through its own ``rlfleet`` from outside the repository.

The test venv has the dev extra, which once hid a runtime dependency that only it brought
(correct LaTeX answers came back WA on a plain install). This runs the README's example and
a math set that needs the symbolic path against exactly what ``pip install rlfleet`` gives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MATH_SET = REPO / "tests" / "data" / "math_symbolic.jsonl"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [str(REPO / "deploy" / "dev" / "wheel.sh"), str(out), "--no-deps"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = out.glob("rlfleet-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel and its declared dependencies only; yields its bin/."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    proc = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    yield env_dir / "bin"


def test_wheel_carries_what_the_service_needs(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    worker = {p.name for p in (REPO / "sandbox" / "worker").glob("*.py")}
    assert "zygote.py" in worker
    assert {f"rlfleet/sandbox/worker/{n}" for n in worker} <= names
    assert {
        "rlfleet/py.typed",
        "rlfleet/sandbox/Dockerfile",
        "rlfleet/sandbox/.dockerignore",
        "rlfleet/v1/verifier_pb2.py",
        "rlfleet/v1/verifier_pb2.pyi",
        "rlfleet/v1/verifier_pb2_grpc.py",
        "rlfleet/sandbox/mathcheck/algebra_child.py",
        "rlfleet/cli.py",
    } <= names
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "rlfleet = rlfleet.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_no_extras_are_installed(installed: Path) -> None:
    proc = subprocess.run(
        [str(installed / "python"), "-c", "import rlfleet, importlib.util as u; "
         "print(rlfleet.__file__); print(u.find_spec('math_verify') is None)"],
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    location, no_math_verify = proc.stdout.split()
    assert location.startswith(str(installed.parent)), location  # not the source tree
    assert no_math_verify == "True"


def run(installed: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(installed / "rlfleet"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",  # nothing of the repository on the import path
    )


def test_readme_example_through_the_installed_cli(installed: Path, require_root: None) -> None:
    proc = run(installed, "verify", str(REPO / "examples" / "cases.jsonl"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    cases = (REPO / "examples" / "cases.jsonl").read_text().splitlines()
    assert len(results) == len(cases)
    assert all(r["verdict"] != "SE" for r in results), results
    assert {r["id"]: r["verdict"] for r in results}["math-frac"] == "AC"


def test_symbolic_math_is_right_on_a_plain_install(installed: Path, require_root: None) -> None:
    expected = {c["id"]: c["expect"] for c in map(json.loads, MATH_SET.read_text().splitlines())}
    proc = run(installed, "verify", str(MATH_SET), "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {r["id"]: r["verdict"] for r in map(json.loads, proc.stdout.splitlines())}
    assert got == expected


def test_prepare_passes_on_a_plain_install(installed: Path, require_root: None) -> None:
    proc = run(installed, "sandbox", "prepare", "--backend", "local")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "symbolic equivalence" in proc.stdout


def test_bench_says_what_the_math_comparison_needs(installed: Path, require_root: None) -> None:
    args = ("--backends", "local", "--tests", "20", "--math", "20", "--language-tests", "2")
    proc = run(installed, "bench", "sandbox", *args, "--rounds", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "# sandbox" in proc.stdout and "local" in proc.stdout  # the sandbox figures
    assert "in 2 rounds" in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines()]
    paths = [r[1] for r in rows if len(r) > 2 and r[0] == "local" and r[1].isalpha()]
    assert paths[:3] == ["pool", "service", "verify"]  # (the paths table, then languages)
    assert "# languages" in proc.stdout and "local    rust" in proc.stdout
    assert "ours_checks_per_s" in proc.stdout
    assert "math_verify" in proc.stdout and "rlfleet[dev]" in proc.stdout
