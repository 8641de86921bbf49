"""The learner's own verification of completions through the verifier fleet's client.

Within a step identical (task, completion) pairs are sent once; across steps their results
are kept in a ``VerdictCache``. A verdict is a function of the case (the task's tests or gold
and the completion's text), so a kept one is the one the fleet would give again: only
verdicts that depend on nothing but the program and its input are kept (AC, WA, CE, RE).
Resource verdicts (TLE, MLE, OLE) may differ on a busier machine and SE is no verdict at
all: those are asked again every time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
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
