from __future__ import annotations

import os
import pwd
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import CGROUP_PARENT_VAR, SECRET, Harness, describe_processes, nobody_processes

BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.docker)]
# The docker backend under gVisor (--runtime runsc) runs these suites only: it is slower
# per test, and the rest exercises nothing that differs under it.
RUNSC_SUITES = {"test_hostile", "test_verdicts"}
RUNSC = pytest.param("runsc", marks=pytest.mark.docker)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "sandbox" in metafunc.fixturenames:
        suite = metafunc.module.__name__.rpartition(".")[2]
        backends = [*BACKENDS, RUNSC] if suite in RUNSC_SUITES else BACKENDS
        metafunc.parametrize("sandbox", backends, indirect=True, scope="module")


@pytest.fixture(scope="session")
def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the local sandbox backend needs root (namespaces, cgroups, setuid)")


LOCAL_MODE_VAR = "RLFLEET_TEST_LOCAL_MODE"
"""Set (by tests/test_rootless.py) where the local backend runs without root: the mode its
tests must find, rather than root."""


@pytest.fixture(scope="session")
def local_backend_ready() -> None:
    """Root, or the rootless mode a run of the suite as another user was started for."""
    expected = os.environ.get(LOCAL_MODE_VAR)
    if expected is None:
        if os.geteuid() != 0:
            pytest.fail(
                "the local sandbox backend's tests run as root (tests/test_rootless.py"
                " runs them as another user)"
            )
        return
    from rlfleet.sandbox import local_mode

    mode = local_mode.detect(os.environ.get(CGROUP_PARENT_VAR, ""))
    assert mode.name == expected, mode.summary()


@pytest.fixture(scope="module")
def sandbox(request: pytest.FixtureRequest, local_backend_ready: None) -> Iterator[Harness]:
    h = Harness(request.param)
    try:
        if request.param == "runsc":
            assert h.container_runtimes() == {"runsc"}, "the runsc suite runs under another runtime"
        yield h
    finally:
        h.close()
    if request.param in ("docker", "runsc"):
        assert h.leftover_containers() == [], "sandbox containers left behind"


@pytest.fixture
def clean_after(sandbox: Harness) -> Iterator[Harness]:
    """Run a test, then check nothing it started is left running."""
    yield sandbox
    assert sandbox.run_procs() == set(), "processes left in a run cgroup"
    if sandbox.mode is None or not sandbox.mode.rootless:
        # (Rootless, runs keep their user's uid outside their namespace: run_procs is
        # the whole check, every process of a run being in its worker's PID namespace.)
        left = nobody_processes()
        assert left == [], f"sandboxed processes left running: {describe_processes(left)}"


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
    # In the home of whoever runs the tests: root's, or (tests/test_rootless.py) that of
    # the user the programs run as outside their namespaces, who may read it there.
    path = Path(pwd.getpwuid(os.getuid()).pw_dir) / "rlfleet-test-secret.txt"
    path.write_text(SECRET)
    try:
        yield path
    finally:
        path.unlink()
