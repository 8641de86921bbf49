"""Faults from outside the sandbox: workers killed mid-run by the host (an operator, the OOM
killer, `docker kill`). The run is ours to retry (SE, never charged), the case still gets
its honest verdict, the pool heals, and nothing is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from harness import Harness, wait_for_sandboxed

from rlfleet.sandbox import cgroups
from rlfleet.sandbox.cases import parse_case
from rlfleet.sandbox.records import CaseResult, CodeCase, Verdict
from rlfleet.sandbox.worker_handle import RunLimits, RunRequest, WorkerError


def case(code: str, stdout: str) -> CodeCase:
    parsed = parse_case(
        {
            "id": "f",
            "kind": "code",
            "language": "python",
            "code": code,
            "tests": [{"stdin": "", "stdout": stdout}],
            "time_limit_s": 5,
        }
    )
    assert isinstance(parsed, CodeCase)
    return parsed


def kill_every_worker(sandbox: Harness) -> int:
    """Kill the workers the way the host would, not through the pool; returns how many."""
    if sandbox.backend == "docker":
        import docker

        from rlfleet.sandbox.docker_backend import own_containers

        containers = own_containers(docker.from_env())
        for c in containers:
            c.kill()
        return len(containers)
    assert sandbox.hierarchy is not None
    pids = set()
    for tag in sandbox.tags:
        pids |= cgroups.procs_in_base(sandbox.hierarchy, tag)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def test_workers_killed_mid_run_are_retried_and_replaced(clean_after: Harness) -> None:
    sandbox = clean_after
    restarts = sandbox.pool.stats.restarts
    slow = case("import time\ntime.sleep(1.0)\nprint('done')", "done")
    pending = asyncio.run_coroutine_threadsafe(sandbox.judge_impl.judge(slow), sandbox._loop)
    assert wait_for_sandboxed(), "the program never started"
    assert kill_every_worker(sandbox) > 0
    result: CaseResult = pending.result(120)
    # The killed run was a system error, retried on a fresh worker: the program's own
    # verdict stands.
    assert (result.verdict, result.passed, result.reward) == (Verdict.AC, 1, 1.0), result
    assert sandbox.pool.stats.restarts > restarts
    # The pool is whole again: as many programs as workers still run side by side.
    quick = [case(f"print({i})", str(i)) for i in range(4)]

    async def all_of() -> list[CaseResult]:
        return list(await asyncio.gather(*(sandbox.judge_impl.judge(c) for c in quick)))

    results = sandbox.call(all_of())
    assert [r.verdict for r in results] == [Verdict.AC] * 4


def test_a_worker_killed_mid_run_keeps_its_channel_until_closed(clean_after: Harness) -> None:
    """The pool kills a worker whose run was cancelled while the run's thread still reads
    its channel by fd number: kill() must not free those numbers, which the next worker's
    channel could be given at once (that thread would then read another worker's reply)."""
    worker = clean_after._factory()(90)
    request = RunRequest(
        kind="python", code="import time; time.sleep(30)", limits=RunLimits(cpu_s=5, wall_s=40)
    )
    try:
        with ThreadPoolExecutor(1) as thread:
            run = thread.submit(worker.run, request)
            time.sleep(1.0)  # (the request is written by then; if not, its write fails)
            numbers = (worker._rfd, worker._wfd)
            worker.kill()
            with pytest.raises(WorkerError, match="worker channel broke"):
                run.result(timeout=30)
            for fd in numbers:
                os.fstat(fd)  # still this worker's: no other channel can have them
    finally:
        worker.close()


def test_a_docker_workers_channel_outlives_the_attach_requests_objects() -> None:
    """docker-py's response to the attach request closes its connection when it is closed or
    collected (in an order the garbage collector picks): the worker's channel must not be
    that socket. Closing every such response, then collecting, leaves the worker working."""
    import urllib3

    from rlfleet.sandbox.docker_backend import DockerConfig, DockerWorkerFactory

    worker = DockerWorkerFactory(DockerConfig())(0)
    try:
        for obj in gc.get_objects():
            if isinstance(obj, urllib3.response.HTTPResponse) and obj.status == 101:
                obj.close()
        gc.collect()
        request = RunRequest(kind="python", code="print(6 * 7)", limits=RunLimits())
        facts = worker.run(request)
        assert (facts.exit_code, facts.stdout, facts.system_error) == (0, b"42\n", "")
    finally:
        worker.close()
