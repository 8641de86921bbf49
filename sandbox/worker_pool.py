"""A pool of sandbox workers behind one async ``run`` call.

Each worker runs one program at a time; a run borrows an idle worker, drives it from a
dedicated thread (worker I/O blocks), and returns it. A worker that fails, reports an
unclean run, or has served ``recycle_after`` runs is replaced. Cancelling a run (client
gone, deadline passed) kills its worker at once, which frees the slot.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from rlfleet.sandbox.worker_handle import RunFacts, RunRequest, WorkerError, WorkerHandle

log = logging.getLogger(__name__)

# Called with a serial number unique within the pool (not the slot: a replacement must not
# collide with the worker it replaces while that one is still being torn down).
WorkerFactory = Callable[[int], WorkerHandle]


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    workers: int = 2
    """Programs run at once (one per worker)."""
    recycle_after: int = 5000
    """Replace a worker after this many runs."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.recycle_after < 1:
            raise ValueError("recycle_after must be >= 1")


class PoolStats:
    """Counters the engine exports as metrics (kept here so the pool has no metrics dependency)."""

    def __init__(self) -> None:
        self.busy = 0
        self.restarts = 0
        self._lock = threading.Lock()

    def add_restart(self) -> None:
        with self._lock:
            self.restarts += 1


class WorkerPool:
    def __init__(self, factory: WorkerFactory, config: PoolConfig) -> None:
        self._factory = factory
        self.config = config
        self.stats = PoolStats()
        self._executor = ThreadPoolExecutor(
            max_workers=config.workers + 2, thread_name_prefix="sandbox-worker"
        )
        self._idle: asyncio.Queue[int] = asyncio.Queue()
        self._workers: dict[int, WorkerHandle | None] = {}
        self._closed = False
        self._dying: list[Future[None]] = []
        self._serial = itertools.count()
        self._starting: set[asyncio.Future[WorkerHandle]] = set()

    @property
    def capacity(self) -> int:
        return self.config.workers

    async def start(self) -> None:
        """Start every worker (in parallel threads); fail if one cannot start."""
        loop = asyncio.get_running_loop()
        slots = range(self.config.workers)
        started = await asyncio.gather(
            *(
                loop.run_in_executor(self._executor, self._factory, next(self._serial))
                for _ in slots
            ),
            return_exceptions=True,
        )
        errors = [s for s in started if isinstance(s, BaseException)]
        for i, w in zip(slots, started, strict=True):
            self._workers[i] = None if isinstance(w, BaseException) else w
            self._idle.put_nowait(i)
        if errors:
            await self.close()
            raise errors[0]

    async def run(self, req: RunRequest) -> RunFacts:
        """Run one program; a worker failure becomes a ``system_error`` fact, never a raise."""
        if self._closed:
            raise RuntimeError("pool is closed")
        slot = await self._idle.get()
        loop = asyncio.get_running_loop()
        self.stats.busy += 1
        try:
            worker = self._workers[slot]
            if worker is None:
                worker = await self._start_worker(slot)
            fut = loop.run_in_executor(self._executor, worker.run, req)
            try:
                facts = await asyncio.shield(fut)
            except asyncio.CancelledError:
                # The run goes on in its thread: kill the worker so the slot frees now.
                self._discard(slot, wait_for=fut)
                raise
            except WorkerError as e:
                log.warning("sandbox worker %d failed: %s", slot, e)
                self._discard(slot)
                return RunFacts.failure(str(e))
            if not facts.extra.get("clean", True) or worker.runs >= self.config.recycle_after:
                self._discard(slot)
            return facts
        except Exception as e:
            log.exception("sandbox worker %d could not start", slot)
            self._discard(slot)
            return RunFacts.failure(f"worker start failed: {e}")
        finally:
            self.stats.busy -= 1
            self._idle.put_nowait(slot)

    async def _start_worker(self, slot: int) -> WorkerHandle:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, self._factory, next(self._serial))
        self._starting.add(fut)
        fut.add_done_callback(self._starting.discard)
        try:
            worker = await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(self._kill_orphan)  # still starting: stop it once it exists
            raise
        self._workers[slot] = worker
        return worker

    def _kill_orphan(self, fut: asyncio.Future[WorkerHandle]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._dying.append(self._executor.submit(fut.result().kill))

    def _discard(self, slot: int, wait_for: asyncio.Future[RunFacts] | None = None) -> None:
        """Drop a worker: killed in the background; the slot starts a fresh one when next used."""
        worker = self._workers.get(slot)
        self._workers[slot] = None
        self.stats.add_restart()
        if worker is not None:
            self._dying.append(self._executor.submit(worker.kill))
        if wait_for is not None:
            # Its thread ends with a WorkerError once the worker is dead: consume it.
            wait_for.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def close(self) -> None:
        self._closed = True
        loop = asyncio.get_running_loop()
        if self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)
            await asyncio.sleep(0)  # let their done-callbacks queue the kills
        workers = [w for w in self._workers.values() if w is not None]
        self._workers = {}
        await asyncio.gather(
            *(loop.run_in_executor(self._executor, w.close) for w in workers),
            *(asyncio.wrap_future(f) for f in self._dying),
            return_exceptions=True,
        )
        self._executor.shutdown(wait=True)
