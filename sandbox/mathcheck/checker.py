"""The math checker: extract, normalise, compare cheaply in-process, algebra out of process."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rlfleet.sandbox.mathcheck.extract import extract_answer
from rlfleet.sandbox.mathcheck.normalize import (
    Norm,
    is_hedge,
    normalize,
    numbers_equal,
    parse_struct,
    strip_assignment,
    to_fraction,
)
from rlfleet.sandbox.mathcheck.pool import AlgebraPool
from rlfleet.sandbox.mathcheck.screen import pathological


@dataclass(frozen=True, kw_only=True)
class MathCheckConfig:
    timeout_s: float = 2.0
    """Wall-time bound of the algebra for one check."""
    workers: int = 2
    """Processes doing algebra."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")


@dataclass(frozen=True, kw_only=True)
class MathResult:
    correct: bool
    extracted: str | None
    reason: str
    """match, mismatch, no_answer, hedged, timeout, rejected, parse_error."""


class _Verdict(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


class MathChecker:
    """Thread-safe; ``check_async`` for event loops. Close it (or use ``with``)."""

    def __init__(self, config: MathCheckConfig = MathCheckConfig()) -> None:
        self.config = config
        self._pool = AlgebraPool(config.workers)
        self._threads = ThreadPoolExecutor(config.workers * 4, thread_name_prefix="mathcheck")

    def __enter__(self) -> MathChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._pool.close()

    @property
    def worker_pids(self) -> list[int]:
        return self._pool.pids()

    def check(self, completion: str, gold: str) -> MathResult:
        ext = extract_answer(completion)
        if ext.answer is None:
            return MathResult(correct=False, extracted=None, reason="no_answer")
        if ext.hedged or (is_hedge(ext.answer) and not is_hedge(gold)):
            return MathResult(correct=False, extracted=ext.answer, reason="hedged")
        try:
            same = self._equal(normalize(ext.answer), normalize(gold))
        except _Verdict as v:
            return MathResult(correct=False, extracted=ext.answer, reason=v.reason)
        return MathResult(
            correct=same, extracted=ext.answer, reason="match" if same else "mismatch"
        )

    async def check_async(self, completion: str, gold: str) -> MathResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self.check, completion, gold)

    def _equal(self, a: Norm, g: Norm) -> bool:
        if a.text == g.text and a.percent == g.percent:
            return True
        fa, fg = to_fraction(a.text), to_fraction(g.text)
        if fa is not None and fg is not None:
            return numbers_equal(a, g, fa, fg)
        sa, sg = parse_struct(a.text), parse_struct(g.text)
        if sa is not None or sg is not None:
            return self._struct_equal(a, g)
        a_text, g_text = a.text, g.text
        if "=" not in g_text:
            a_text = strip_assignment(a_text)
            fa = to_fraction(a_text)
            if fa is not None and fg is not None:
                return numbers_equal(Norm(a_text, a.percent), g, fa, fg)
        for text in (a_text, g_text):
            why = pathological(text)
            if why:
                raise _Verdict("rejected")
        status, value = self._pool.check(a_text, g_text, self.config.timeout_s)
        if status == "timeout":
            raise _Verdict("timeout")
        if status == "error":
            raise _Verdict("parse_error")
        return bool(value)

    def _struct_equal(self, a: Norm, g: Norm) -> bool:
        sa, sg = parse_struct(a.text), parse_struct(g.text)
        if sa is None or sg is None:
            return False  # one is a single value, the other several: never equal
        if len(sa.items) != len(sg.items):
            return False
        # Brackets of tuples and intervals matter; a bare list against a set is fine.
        same_brackets = sa.open == sg.open and sa.close == sg.close
        if not same_brackets and not (sa.unordered and sg.unordered):
            return False
        items_a = [Norm(x) for x in sa.items]
        items_g = [Norm(x) for x in sg.items]
        if not sa.unordered:
            return all(self._equal(x, y) for x, y in zip(items_a, items_g, strict=True))
        unmatched = list(items_g)
        for x in items_a:
            for i, y in enumerate(unmatched):
                if self._equal(x, y):
                    del unmatched[i]
                    break
            else:
                return False
        return True
