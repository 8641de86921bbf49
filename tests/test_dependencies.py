"""Runtime dependencies: declared, installed, and a missing one stops start-up by name.

A dependency that only the dev extra brings (as latex2sympy2_extended once was) passes every
test in the dev venv and gives wrong rewards on a plain install; these tests close that gap
from both sides: what the code imports must be declared, and what is declared but absent at
run time is an error naming it, never a quiet verdict.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from rlfleet import deps

ROOT = Path(__file__).resolve().parent.parent
RLFLEET = [sys.executable, "-m", "rlfleet.cli"]

# Imports allowed without a runtime declaration, each for a stated reason.
OPTIONAL_IMPORTS = {
    # The math benchmark compares against math-verify when it is installed (dev extra) and
    # says so when it is not.
    "math_verify": {"bench/math_bench.py"},
    # Training data in parquet is read with pyarrow when it is installed; without it the
    # loader says to install it (JSONL needs nothing).
    "pyarrow": {"learner/data.py"},
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# Components whose imports may also come from an extra: the verifier's install stays lean
# (no torch), the rollout service and the learner bring the ML stack with their extra.
COMPONENT_EXTRAS = {"rollout": ("rollout",), "learner": ("rollout", "train")}
# Files outside those components that measure them, and so may use their extras.
FILE_EXTRAS = {"bench/rollout_bench.py": ("rollout",)}


def declared(component: str = "", file: str = "") -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in (*COMPONENT_EXTRAS.get(component, ()), *FILE_EXTRAS.get(file, ())):
        reqs += project["optional-dependencies"].get(extra, [])
    return {canonical(n) for n in deps.runtime_requirements(reqs)}


def third_party_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "rlfleet"}


def runtime_sources() -> list[Path]:
    return sorted(
        p
        for top in ("rlfleet", "sandbox", "bench", *COMPONENT_EXTRAS)
        for p in (ROOT / top).rglob("*.py")
        # Generated code, and the sandbox worker (stdlib-only: its own test below).
        if p.relative_to(ROOT).parts[:2] not in (("rlfleet", "v1"), ("sandbox", "worker"))
    )


def test_every_third_party_import_is_a_declared_runtime_dependency() -> None:
    dists = metadata.packages_distributions()
    undeclared = []
    for path in runtime_sources():
        rel = path.relative_to(ROOT).as_posix()
        runtime = declared(rel.split("/")[0], rel)
        for module in third_party_imports(path):
            if rel in OPTIONAL_IMPORTS.get(module, set()):
                continue
            owners = {canonical(d) for d in dists.get(module, [])}
            if not owners & runtime:
                undeclared.append(f"{rel}: {module} (from {sorted(owners) or 'nothing installed'})")
    assert undeclared == [], f"imported but not a declared runtime dependency: {undeclared}"


def test_the_check_sees_real_files() -> None:
    # Guards the test above against passing on an empty walk.
    imports = {m for p in runtime_sources() for m in third_party_imports(p)}
    assert {"grpc", "sympy", "latex2sympy2_extended", "docker"} <= imports


def test_sandbox_worker_is_stdlib_only() -> None:
    # It runs under the system Python inside the sandbox, where nothing else is installed.
    worker = sorted((ROOT / "sandbox" / "worker").glob("*.py"))
    siblings = {p.stem for p in worker}
    assert "zygote" in siblings
    for path in worker:
        assert third_party_imports(path) - siblings == set(), path


def test_declared_dependencies_are_installed() -> None:
    assert deps.missing() == []


def test_missing_names_each_absent_requirement() -> None:
    def version(name: str) -> str:
        if name in ("sympy", "antlr4-python3-runtime"):
            raise metadata.PackageNotFoundError(name)
        return "1.0"

    reqs = ["grpcio>=1", "sympy>=1.12", "antlr4-python3-runtime==4.13.2", 'pytest; extra == "dev"']
    assert deps.runtime_requirements(reqs) == ["grpcio", "sympy", "antlr4-python3-runtime"]
    assert deps.missing(reqs, version=version) == ["sympy", "antlr4-python3-runtime"]
    message = str(deps.MissingDependency(["sympy"]))
    assert "sympy" in message and "pip install rlfleet" in message


BLOCKER = """\
import importlib.abc
import sys

BLOCKED = {blocked!r}


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, Block())
"""


def without(tmp_path: Path, *modules: str) -> dict[str, str]:
    """An environment in which ``modules`` cannot be imported (here and in child processes)."""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(blocked=set(modules)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH")) if p)
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RLFLEET, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("module", ["latex2sympy2_extended", "antlr4", "sympy"])
def test_serve_refuses_to_start_without_a_math_dependency(
    tmp_path: Path, module: str, require_root: None
) -> None:
    r = run(["serve", "sandbox", "--port", "0", "--workers", "1"], without(tmp_path, module))
    assert r.returncode != 0
    assert module in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_verify_refuses_to_start_without_the_latex_parser(
    tmp_path: Path, require_root: None
) -> None:
    cases = tmp_path / "cases.jsonl"
    cases.write_text(
        '{"id": "trig", "kind": "math", "completion": "\\\\boxed{\\\\sin^2 x + \\\\cos^2 x}", "gold": "1"}\n'
    )
    r = run(["verify", str(cases), "--workers", "1"], without(tmp_path, "latex2sympy2_extended"))
    assert r.returncode != 0
    assert r.stdout == "", "no verdict may come out of a checker that cannot start"
    assert "latex2sympy2_extended" in r.stderr, r.stderr


def test_prepare_names_the_missing_module(tmp_path: Path, require_root: None) -> None:
    r = run(
        ["sandbox", "prepare", "--backend", "local"], without(tmp_path, "latex2sympy2_extended")
    )
    assert r.returncode == 1
    assert "MISSING" in r.stdout and "latex2sympy2_extended" in r.stdout, r.stdout
    healthy = run(["sandbox", "prepare", "--backend", "local"], without(tmp_path))
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "symbolic equivalence" in healthy.stdout
