"""The learner's own verification of completions through the verifier fleet's client.

Within a step identical (task, completion) pairs are sent once; across steps their results
are kept in a ``VerdictCache``. A verdict is a function of the case (the task's tests or gold
and the completion's text), so a kept one is the one the fleet would give again: only
verdicts that depend on nothing but the program and its input are kept (AC, WA, CE, RE).
Resource verdicts (TLE, MLE, OLE) may differ on a busier machine and SE is no verdict at
all: those are asked again every time.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from rlfleet.learner.data import Task
from rlfleet.sandbox.records import Case, CaseResult, Verdict

CACHEABLE = frozenset({Verdict.AC, Verdict.WA, Verdict.CE, Verdict.RE})

Key = tuple[str, str]
"""(task id, completion text): within a run the task id fixes the rest of the case."""


class VerifierLike(Protocol):
    """What ``score`` needs of ``VerifierClient`` (fakes in tests)."""

    def verify_many(self, cases: Iterable[Case]) -> AsyncIterator[CaseResult]: ...


class StreamingVerifier(Protocol):
    """What ``BatchScorer`` needs of ``VerifierClient``: cases that come as they come."""

    def verify_many(self, cases: AsyncIterable[Case]) -> AsyncIterator[CaseResult]: ...


@dataclass
class ScoreStats:
    unique: int = 0
    """Distinct (task, completion) pairs in the step."""
    cache_hits: int = 0
    """Of those, answered from the cache."""
    verified: int = 0
    """Sent to the fleet."""


class VerdictCache:
    def __init__(self) -> None:
        self._results: dict[Key, CaseResult] = {}

    def __len__(self) -> int:
        return len(self._results)

    def get(self, key: Key) -> CaseResult | None:
        return self._results.get(key)

    def put(self, key: Key, result: CaseResult) -> None:
        if result.verdict in CACHEABLE:
            self._results[key] = result


async def score(
    client: VerifierLike,
    pairs: Sequence[tuple[Task, str]],
    cache: VerdictCache,
) -> tuple[list[CaseResult], ScoreStats]:
    """The verifier's result for each (task, completion text), in order."""
    stats = ScoreStats()
    unique: dict[Key, Task] = {}
    for task, text in pairs:
        unique.setdefault((task.id, text), task)
    stats.unique = len(unique)
    found: dict[Key, CaseResult] = {}
    cases: list[Case] = []
    by_case_id: dict[str, Key] = {}
    for i, (key, task) in enumerate(unique.items()):
        kept = cache.get(key)
        if kept is not None:
            found[key] = kept
            continue
        case_id = f"{i}"
        by_case_id[case_id] = key
        cases.append(task.case_for(key[1], case_id))
    stats.cache_hits = len(found)
    stats.verified = len(cases)
    if cases:
        async for result in client.verify_many(cases):
            key = by_case_id[result.id]
            found[key] = result
            cache.put(key, result)
    return [found[(task.id, text)] for task, text in pairs], stats


class BatchScorer:
    """``score`` for the groups of one batch as they come, over a single verifier stream:
    each group's new cases join the stream as soon as the group is whole, and its call
    returns once they are answered. (A stream per group costs the fleet a stream's set-up
    and its own flow control per group; one stream keeps it fed at its own pace.)

    Use as ``async with BatchScorer(client, cache) as scorer: await scorer.score(pairs)``.
    A failure of the stream (no verifier left) is raised by every call waiting on it and
    every later one."""

    def __init__(self, client: StreamingVerifier, cache: VerdictCache) -> None:
        self.client = client
        self.cache = cache
        self._cases: asyncio.Queue[Case | None] = asyncio.Queue()
        self._waiting: dict[str, asyncio.Future[CaseResult]] = {}
        self._pending: dict[Key, asyncio.Future[CaseResult]] = {}
        self._ids = itertools.count()
        self._failed: BaseException | None = None
        self._pump: asyncio.Task[None] | None = None

    async def __aenter__(self) -> BatchScorer:
        self._pump = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cases.put_nowait(None)
        if self._pump is not None:
            if exc[0] is not None:
                self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)

    async def _feed(self) -> AsyncIterator[Case]:
        while (case := await self._cases.get()) is not None:
            yield case

    async def _run(self) -> None:
        # Every way out fails the callers still waiting, cancellation included: a caller
        # must never wait on a stream that is gone.
        failure: BaseException = RuntimeError("the verifier stream ended with cases unanswered")
        try:
            async for result in self.client.verify_many(self._feed()):
                future = self._waiting.pop(result.id, None)
                if future is not None and not future.done():
                    future.set_result(result)
        except Exception as e:  # (handed to every caller waiting on the stream, unchanged)
            failure = e
        finally:
            self._failed = failure
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(failure)
                    # (Marked seen: a caller cancelled with the run has none to take it.)
                    future.exception()
            self._waiting.clear()

    async def score(self, pairs: Sequence[tuple[Task, str]]) -> tuple[list[CaseResult], ScoreStats]:
        """The verifier's result for each (task, completion text), in order."""
        if self._failed is not None:
            raise self._failed
        loop = asyncio.get_running_loop()
        stats = ScoreStats()
        keys = list(dict.fromkeys((task.id, text) for task, text in pairs))
        stats.unique = len(keys)
        futures: dict[Key, asyncio.Future[CaseResult]] = {}
        tasks = {(task.id, text): task for task, text in pairs}
        for key in keys:
            kept = self.cache.get(key)
            if kept is not None:
                stats.cache_hits += 1
                futures[key] = loop.create_future()
                futures[key].set_result(kept)
            elif key in self._pending:  # (another group of the batch asked already)
                stats.cache_hits += 1
                futures[key] = self._pending[key]
            else:
                stats.verified += 1
                case_id = str(next(self._ids))
                future = loop.create_future()
                self._waiting[case_id] = self._pending[key] = futures[key] = future
                self._cases.put_nowait(tasks[key].case_for(key[1], case_id))
        try:
            found = {key: await future for key, future in futures.items()}
        finally:
            for key in keys:
                if key in self._pending and self._pending[key].done():
                    del self._pending[key]
        for key, result in found.items():
            self.cache.put(key, result)
        return [found[(task.id, text)] for task, text in pairs], stats
