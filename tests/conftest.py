from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Harness, nobody_processes

BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture(scope="session")
def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the local sandbox backend needs root (namespaces, cgroups, setuid)")


@pytest.fixture(scope="module", params=BACKENDS)
def sandbox(request: pytest.FixtureRequest, require_root: None) -> Iterator[Harness]:
    h = Harness(request.param)
    try:
        yield h
    finally:
        h.close()
    if request.param == "docker":
        assert h.leftover_containers() == [], "sandbox containers left behind"


@pytest.fixture
def clean_after(sandbox: Harness) -> Iterator[Harness]:
    """Run a test, then check nothing it started is left running."""
    yield sandbox
    assert sandbox.run_procs() == set(), "processes left in a run cgroup"
    assert nobody_processes() == [], "sandboxed processes left running"
