"""A synchronous front for tests: a real worker pool + judge on a private event loop.

Hostile programs run with the workers' caps lowered (memory, tasks), and every worker is
PID 1 of its own namespace: a broken sandbox still cannot take the machine down.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from rlfleet.sandbox import cgroups, local_mode
from rlfleet.sandbox.cases import parse_case
from rlfleet.sandbox.judge import Judge, JudgeConfig
from rlfleet.sandbox.local_backend import LocalWorker, LocalWorkerConfig
from rlfleet.sandbox.records import CaseResult, CodeCase
from rlfleet.sandbox.worker_handle import WorkerHandle
from rlfleet.sandbox.worker_pool import PoolConfig, WorkerFactory, WorkerPool

T = TypeVar("T")
TEST_CAPS = cgroups.BaseLimits(memory_mb=1536, pids=256)
NOBODY = 65534
SECRET = "rlfleet-test-secret-4242"
"""Planted on the host (and in its environment) by hostile tests; no program may read it."""
CGROUP_PARENT_VAR = "RLFLEET_TEST_CGROUP_PARENT"
"""The local backend's --cgroup-parent in tests (tests/test_rootless.py sets it)."""
GVISOR_BINARY = "/usr/bin/runsc"


class Harness:
    def __init__(self, backend: str, workers: int = 2, judge: JudgeConfig | None = None) -> None:
        self.backend = backend
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.mode = (
            local_mode.detect(os.environ.get(CGROUP_PARENT_VAR, "")) if backend == "local" else None
        )
        self.hierarchy = self.mode.hierarchy if self.mode else None
        self.tags: list[str] = []
        self.workers: list[LocalWorker] = []
        self.pool = WorkerPool(self._factory(), PoolConfig(workers=workers))
        self.call(self.pool.start())
        self.judge_impl = Judge(self.pool.run, judge or JudgeConfig())

    def _factory(self) -> WorkerFactory:
        if self.backend in ("docker", "runsc"):
            from rlfleet.sandbox.docker_backend import DockerConfig, DockerWorkerFactory

            runtime = "runsc" if self.backend == "runsc" else ""
            return DockerWorkerFactory(DockerConfig(runtime=runtime))
        mode = self.mode
        assert mode is not None

        def make(i: int) -> WorkerHandle:
            tag = f"{os.getpid()}-test{i}"
            if tag not in self.tags:
                self.tags.append(tag)
            worker = LocalWorker(tag, mode, LocalWorkerConfig(caps=TEST_CAPS))
            self.workers = [w for w in self.workers if w.alive()] + [worker]
            return worker

        return make

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def judge(self, case: dict[str, Any] | CodeCase) -> CaseResult:
        if isinstance(case, dict):
            case = dict({"id": "t", "kind": "code", "language": "python"}, **case)
            parsed = parse_case(case)
            assert isinstance(parsed, CodeCase)
            case = parsed
        return self.call(self.judge_impl.judge(case))

    def run_procs(self) -> set[int]:
        """Processes inside run cgroups, or without cgroups the processes under each local
        worker but the worker itself (should be none between runs)."""
        if self.backend != "local":
            return set()
        if self.hierarchy is None:
            parents = child_pids()
            return {
                pid
                for w in self.workers
                if w.alive()
                for init in parents.get(w.pid, [])  # the worker, PID 1 of its namespace
                for pid in descendants(init, parents)
            }
        pids: set[int] = set()
        for tag in self.tags:
            for base in self.hierarchy.base_dirs(tag):
                run = base / "run"
                if run.is_dir():
                    pids.update(int(p) for p in (run / "cgroup.procs").read_text().split())
        return pids

    def leftover_containers(self) -> list[str]:
        import docker

        from rlfleet.sandbox.docker_backend import own_containers

        return [c.name for c in own_containers(docker.from_env())]

    def container_runtimes(self) -> set[str]:
        """The OCI runtimes this process's sandbox containers run under."""
        import docker

        from rlfleet.sandbox.docker_backend import own_containers

        return {c.attrs["HostConfig"]["Runtime"] for c in own_containers(docker.from_env())}

    def close(self) -> None:
        self.call(self.pool.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def child_pids() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def descendants(pid: int, children: dict[int, list[int]]) -> set[int]:
    found: set[int] = set()
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        if p not in found:
            found.add(p)
            todo.extend(children.get(p, []))
    return found


def nobody_processes() -> list[int]:
    """Processes on this machine running as the sandbox's uid (should be none between runs).

    gVisor's own processes (its kernel and the host processes it keeps to run programs'
    address spaces in) run as that uid too; they are the runtime, not programs, and are left
    out: what a program leaves under gVisor lives inside the worker's namespace there, where
    the worker kills it in the run's cgroup as on Linux."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            if os.readlink(entry / "exe") == GVISOR_BINARY:
                continue
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:") and int(line.split()[1]) == NOBODY:
                out.append(int(entry.name))
    return out


def describe_processes(pids: list[int]) -> str:
    """pid, parent and command line of each (for failure messages)."""
    out = []
    for pid in pids:
        try:
            ppid = (Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split() or ["?", "?"])[
                1
            ]
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError as e:
            out.append(f"{pid} ({e.strerror})")
            continue
        out.append(f"{pid} (parent {ppid}, {exe}: {cmd!r})")
    return "; ".join(out)


def wait_for_sandboxed(timeout_s: float = 60.0, settle_s: float = 0.2) -> list[int]:
    """Wait until a sandboxed program runs: a process of the sandbox uid seen twice,
    ``settle_s`` apart (the judge's brief syntax checks do not count). Returns its pids, or
    [] when none appeared in ``timeout_s``. One sighting is kept: asking again could fall
    between two programs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        first = set(nobody_processes())
        if not first:
            time.sleep(0.01)
            continue
        time.sleep(settle_s)
        still = first & set(nobody_processes())
        if still:
            return sorted(still)
    return []


def dashboard_exprs(name: str = "rlfleet-verifier") -> list[str]:
    """Every query of a shipped Grafana dashboard (deploy/grafana/NAME.json)."""
    path = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / f"{name}.json"
    dash = json.loads(path.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def assert_pool_works(h: Harness) -> None:
    """After a hostile program: the pool still judges a plain case."""
    case = {"code": "print(input())", "tests": [{"stdin": "alive\n", "stdout": "alive\n"}]}
    r = h.judge(case)
    assert r.verdict.value == "AC", r
