"""Faults from outside the sandbox: workers killed mid-run by the host (an operator, the OOM
killer, `docker kill`). The run is ours to retry (SE, never charged), the case still gets
its honest verdict, the pool heals, and nothing is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from harness import Harness, wait_for_sandboxed

from rlfleet.sandbox import cgroups
from rlfleet.sandbox.cases import parse_case
from rlfleet.sandbox.records import CaseResult, CodeCase, Verdict


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
