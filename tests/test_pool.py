"""Worker pool behaviour with fake workers: failures become SE facts and the worker is
replaced, cancelling a run frees its slot at once, workers are recycled."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading

import pytest

from rlfleet.sandbox.worker_handle import RunFacts, RunLimits, RunRequest, WorkerError, WorkerHandle
from rlfleet.sandbox.worker_pool import PoolConfig, WorkerPool

REQ = RunRequest(kind="python", code="print(1)", limits=RunLimits())


def facts(**kw: object) -> RunFacts:
    ok = dataclasses.replace(RunFacts.failure(""), exit_code=0, stdout=b"1\n", stdout_size=2)
    return dataclasses.replace(ok, **kw)  # type: ignore[arg-type]


class FakeWorker(WorkerHandle):
    def __init__(self, index: int, behaviour: str) -> None:
        super().__init__()
        self.index = index
        self.behaviour = behaviour
        self.killed = threading.Event()
        self.closed = False

    def run(self, req: RunRequest) -> RunFacts:
        self.runs += 1
        if self.behaviour == "crash":
            raise WorkerError("worker died")
        if self.behaviour == "hang":
            self.killed.wait(10)
            raise WorkerError("killed")
        if self.behaviour == "unclean":
            return facts(extra={"clean": False})
        return facts()

    def close(self) -> None:
        self.closed = True

    def kill(self) -> None:
        self.killed.set()


class Factory:
    def __init__(self, behaviours: list[str]) -> None:
        self.behaviours = behaviours
        self.made: list[FakeWorker] = []

    def __call__(self, index: int) -> FakeWorker:
        behaviour = (
            self.behaviours[len(self.made)] if len(self.made) < len(self.behaviours) else "ok"
        )
        w = FakeWorker(index, behaviour)
        self.made.append(w)
        return w


async def test_crash_becomes_system_error_and_worker_is_replaced() -> None:
    factory = Factory(["crash"])
    pool = WorkerPool(factory, PoolConfig(workers=1))
    await pool.start()
    first = await pool.run(REQ)
    assert first.system_error == "worker died"
    second = await pool.run(REQ)
    assert second.system_error == "" and second.stdout == b"1\n"
    assert len(factory.made) == 2 and factory.made[0].killed.is_set()
    assert pool.stats.restarts == 1
    await pool.close()
    assert factory.made[1].closed


async def test_cancel_kills_the_worker_and_frees_the_slot() -> None:
    factory = Factory(["hang"])
    pool = WorkerPool(factory, PoolConfig(workers=1))
    await pool.start()
    task = asyncio.create_task(pool.run(REQ))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The slot is free again at once: the next run gets a fresh worker.
    done = await asyncio.wait_for(pool.run(REQ), timeout=5)
    assert done.stdout == b"1\n"
    assert factory.made[0].killed.wait(5)
    assert pool.stats.busy == 0
    await pool.close()


async def test_unclean_runs_and_recycling_replace_workers() -> None:
    factory = Factory(["unclean"])
    pool = WorkerPool(factory, PoolConfig(workers=1, recycle_after=3))
    await pool.start()
    for _ in range(7):
        assert (await pool.run(REQ)).system_error == ""
    # worker 0: unclean after 1 run; worker 1: recycled after 3; worker 2: after 3 more
    # (its successor starts only when next needed).
    assert len(factory.made) == 3
    assert all(w.killed.wait(5) for w in factory.made)  # killed in the background
    assert pool.stats.restarts == 3
    await pool.close()


async def test_parallel_runs_bounded_by_workers() -> None:
    factory = Factory([])
    pool = WorkerPool(factory, PoolConfig(workers=3))
    await pool.start()
    peak = 0

    async def one() -> None:
        nonlocal peak
        peak = max(peak, pool.stats.busy)
        await pool.run(REQ)

    await asyncio.gather(*(one() for _ in range(50)))
    assert pool.stats.busy == 0
    assert peak <= 3
    await pool.close()


async def test_start_failure_is_raised_and_nothing_left() -> None:
    made: list[FakeWorker] = []

    def factory(index: int) -> FakeWorker:
        if index == 1:
            raise WorkerError("cannot start")
        w = FakeWorker(index, "ok")
        made.append(w)
        return w

    pool = WorkerPool(factory, PoolConfig(workers=2))
    with pytest.raises(WorkerError, match="cannot start"):
        await pool.start()
    assert [w.index for w in made] == [0]  # worker 0 started before worker 1 failed
    assert made[0].closed


def test_a_broken_channel_says_what_its_fds_are() -> None:
    """An fd closed under a worker (EBADF) is named in the error, with what the other is."""
    handle = WorkerHandle()
    handle._rfd, handle._wfd = os.pipe()
    read_fd = handle._rfd
    os.close(read_fd)
    try:
        with pytest.raises(WorkerError) as e:
            handle._read_reply(0.1)
        assert f"read fd {read_fd}: closed; write fd {handle._wfd}: pipe:[" in str(e.value)
    finally:
        os.close(handle._wfd)
