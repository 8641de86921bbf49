from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import SECRET, Harness, nobody_processes

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


@pytest.fixture
def listener() -> Iterator[tuple[int, list[object]]]:
    """A loopback TCP listener that records any connection it accepts."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
            except OSError:
                continue
            accepted.append(addr)
            conn.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield srv.getsockname()[1], accepted
    stop.set()
    t.join(2)
    srv.close()


@pytest.fixture
def host_secret_file() -> Iterator[Path]:
    """A file on the host holding SECRET."""
    path = Path("/root/rlfleet-test-secret.txt")
    path.write_text(SECRET)
    try:
        yield path
    finally:
        path.unlink()
