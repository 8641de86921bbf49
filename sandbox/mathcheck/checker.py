"""The math checker: extract, normalise, compare cheaply in-process, algebra out of process."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rlfleet.sandbox.mathcheck.algebra import AlgebraRunner
from rlfleet.sandbox.mathcheck.compare import Algebra, Undecided, equal, is_candidate_list
from rlfleet.sandbox.mathcheck.extract import EXTRACTIONS, Extraction, boxed_contents, extract
from rlfleet.sandbox.mathcheck.normalize import (
    Norm,
    alternatives_as_list,
    choice_letter,
    decimal_comma,
    has_and,
    inequality_union,
    is_hedge,
    is_point_decimal,
    normalize,
    parse_struct,
    strip_assignment,
)

_MATH_DELIMITER = re.compile(r"(?<!\\)\$")
_CHOICE = re.compile(r"^[A-Z]$")


@dataclass(frozen=True, kw_only=True)
class MathCheckConfig:
    timeout_s: float = 2.0
    """CPU-time budget of the algebra of one check (its process's CPU seconds, so that a
    loaded host gives the same verdicts as a quiet one); past it the check is "timeout"."""
    wall_limit_s: float = 20.0
    """Wall-time cap of the algebra of one check however little CPU it was given (a starved
    or stalled process); past it the check is "timeout"."""
    processes: int = 2
    """Child processes doing algebra (each about 100 MB with sympy loaded), plus one
    standby that replaces at once a child killed for overrunning its budget."""
    max_wait_s: float = 30.0
    """How long a check may wait for a free process before it gives up as "timeout"."""
    process_memory_mb: int = 2048
    """Address-space limit of each process: a ballooning parse fails instead of swapping."""
    extraction: str = "strict"
    """How the answer is found when a check does not say: "strict" (answer tags, boxes,
    final answer lines; docs/math.md) or "prose" (failing those, the last mathematical
    expression of the text, for base models that write no answer format)."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.max_wait_s <= 0:
            raise ValueError("timeout_s and max_wait_s must be > 0")
        if self.wall_limit_s < self.timeout_s:
            raise ValueError("wall_limit_s must be >= timeout_s")
        if self.processes < 1:
            raise ValueError("processes must be >= 1")
        _check_extraction(self.extraction)


def _check_extraction(extraction: str) -> None:
    if extraction not in EXTRACTIONS:
        raise ValueError(f"extraction must be one of {', '.join(EXTRACTIONS)}, not {extraction!r}")


@dataclass(frozen=True, kw_only=True)
class MathResult:
    correct: bool
    """Whether the completion's final answer equals the gold answer."""
    extracted: str | None
    """The final answer as found in the completion; None when there was none."""
    reason: str
    """One of "match", "mismatch", "no_answer", "hedged", "timeout", "rejected" (a
    pathological answer refused before any algebra) and "parse_error"."""


class AlgebraFault(RuntimeError):
    """The algebra failed through no fault of the answer: the check has no verdict."""


def _hedged(found: Extraction) -> bool:
    """Several boxed answers of different value. The same value written twice (``0.5`` and
    ``\\frac{1}{2}``) is no hedge; only the cheap comparisons decide, never algebra."""
    if not found.hedged or found.answer is None:
        return False
    last = normalize(found.answer)
    for other in found.others:
        try:
            if not equal(normalize(other), last, _needs_algebra):
                return True
        except Undecided:
            return True  # could not tell cheaply: different-looking boxes count as hedging
    return False


def _distinct(boxes: tuple[str, ...]) -> list[str]:
    """The boxes, each written once (ignoring spaces), in order."""
    seen: set[str] = set()
    out = []
    for box in boxes:
        key = "".join(box.split())
        if key not in seen:
            seen.add(key)
            out.append(box)
    return out


def read_gold(gold: str) -> str:
    """The gold answer as the checker compares it.

    A boxed gold is its box ("\\boxed{5}"); several boxes of different text are all of the
    answer ("\\boxed{4} and \\boxed{-1}" is the list "4, -1"); values joined by "and"
    ("3 \\text{ and } 10", "5, 17, and 29") are a list; the ``$`` of math spans go
    ("(-6,6)$, $(2,6)" is the list "(-6,6), (2,6)"; an escaped ``\\$`` stays)."""
    boxes = boxed_contents(gold)
    if boxes:
        gold = ", ".join(_distinct(tuple(boxes)))
    gold = _MATH_DELIMITER.sub("", gold)  # "(-6,6)$, $(2,6)": math spans of one list
    if has_and(gold) and not is_hedge(gold):
        gold = alternatives_as_list(gold)
    return gold


def multi_valued(gold: str) -> bool:
    """Whether the gold is several values in no order: a list, a set, alternatives."""
    if is_hedge(gold):
        return True
    struct = parse_struct(strip_assignment(normalize(gold).text))
    return struct is not None and struct.unordered and len(struct.items) > 1


def together(found: Extraction) -> bool:
    """Whether the final region's boxes are given together ("\\boxed{2} and \\boxed{-3}"),
    not as alternatives ("\\boxed{2} or \\boxed{-3}")."""
    return not is_hedge(found.between)


def _shutdown(threads: ThreadPoolExecutor, algebra: AlgebraRunner) -> None:
    threads.shutdown(wait=False, cancel_futures=True)
    algebra.close()


def _needs_algebra(answer: str, gold: str) -> bool:
    raise Undecided("needs_algebra")


class MathChecker:
    """Checks completions against gold answers; thread-safe, and ``await check_async`` from
    event loops. Owns child processes: close it (or use ``with``).

    Raises ``AlgebraStartError`` when its processes cannot start (a missing dependency)."""

    def __init__(self, config: MathCheckConfig = MathCheckConfig()) -> None:
        self.config = config
        self._algebra = AlgebraRunner(
            config.processes, memory_mb=config.process_memory_mb, max_wait_s=config.max_wait_s
        )
        # Threads only wait on processes; a few per process keep every process busy.
        self._threads = ThreadPoolExecutor(config.processes * 4, thread_name_prefix="mathcheck")
        self._closed = False
        self._pid = os.getpid()
        # A checker dropped without close() still stops its processes (at collection or exit).
        self._finalizer = weakref.finalize(self, _shutdown, self._threads, self._algebra)

    def __enter__(self) -> MathChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every child process; the checker cannot be used afterwards."""
        self._closed = True
        self._finalizer()

    @property
    def process_pids(self) -> list[int]:
        """Process ids of the algebra processes doing checks (for tests and monitoring)."""
        return self._algebra.pids()

    @property
    def standby_pids(self) -> list[int]:
        """Process id of the ready standby, when there is one (for tests and monitoring)."""
        return self._algebra.standby_pids()

    def check(self, completion: str, gold: str, *, extraction: str | None = None) -> MathResult:
        """Compare the completion's final answer with ``gold``; its algebra spends at most
        ``timeout_s`` of CPU time and blocks at most ``wall_limit_s`` (plus ``max_wait_s``
        when every process is busy). ``extraction``
        ("strict" or "prose") overrides the configured one for this check.

        Raises ``AlgebraFault`` when the algebra failed in a way that is not the answer's
        (a bug, a broken install): no verdict can be given."""
        self._usable()
        prose = self._prose(extraction)
        budget = [self.config.timeout_s]
        wall_end = time.monotonic() + self.config.wall_limit_s

        def algebra(answer: str, gold_text: str) -> bool:
            # One budget for the whole check, however many elements a tuple sends.
            wall_left = wall_end - time.monotonic()
            if budget[0] <= 0 or wall_left <= 0:
                raise Undecided("timeout")
            status, value, spent = self._algebra.check(answer, gold_text, budget[0], wall_left)
            budget[0] -= spent
            if status == "ok":
                return bool(value)
            if status == "fault":
                raise AlgebraFault(str(value))
            raise Undecided("parse_error" if status == "error" else "timeout")

        return self._check(completion, gold, algebra, prose=prose)

    async def check_async(
        self, completion: str, gold: str, *, extraction: str | None = None
    ) -> MathResult:
        """As ``check``; answers settled without algebra return without leaving the loop."""
        self._usable()
        try:
            return self._check(completion, gold, _needs_algebra, prose=self._prose(extraction))
        except Undecided:
            loop = asyncio.get_running_loop()
            check = functools.partial(self.check, extraction=extraction)
            return await loop.run_in_executor(self._threads, check, completion, gold)

    def _prose(self, extraction: str | None) -> bool:
        mode = self.config.extraction if extraction is None else extraction
        _check_extraction(mode)
        return mode == "prose"

    def _usable(self) -> None:
        if self._closed:
            raise RuntimeError("math checker is closed")
        if os.getpid() != self._pid:
            # The children's pipes belong to the parent; sharing them would mix up replies.
            raise RuntimeError("a MathChecker cannot cross a fork: create one per process")

    def _check(self, completion: str, gold: str, algebra: Algebra, *, prose: bool) -> MathResult:
        gold = read_gold(gold)
        found = extract(completion, prose=prose)
        answer = found.answer
        if answer is None:
            return MathResult(correct=False, extracted=None, reason="no_answer")
        if _hedged(found):
            if not (multi_valued(gold) and (together(found) or is_hedge(gold))):
                return MathResult(correct=False, extracted=answer, reason="hedged")
            answer = ", ".join(_distinct(found.boxes))  # the boxes together are the answer
        if is_hedge(answer) and not is_hedge(gold):
            return MathResult(correct=False, extracted=answer, reason="hedged")
        # "x < 1 or x > 2": one set, a union of inequalities' sets, not alternatives.
        answer_text, gold = inequality_union(answer) or answer, inequality_union(gold) or gold
        if is_hedge(gold):  # "x = 2 or x = 3" as gold: compare the alternatives as a set
            a = normalize(alternatives_as_list(answer_text))
            g = normalize(alternatives_as_list(gold))
        else:
            a, g = normalize(answer_text), normalize(gold)
            if parse_struct(g.text) is not None and has_and(answer_text):
                a = normalize(alternatives_as_list(answer_text))  # "1 and 2" against "1, 2"
        decimal = decimal_comma(gold)
        if decimal is not None and is_point_decimal(a.text):
            g = normalize(decimal)  # a gold of "2,5" against "2.5": a decimal comma
        letter = choice_letter(answer_text) if _CHOICE.match(g.text) else None
        if letter is not None:
            a = Norm(letter)  # "(D) (2,0)" against the gold "D": the choice's letter
        letter = choice_letter(gold) if _CHOICE.match(a.text) else None
        if letter is not None:
            g = Norm(letter)  # and "C" against the gold "C. x = 42"
        if is_candidate_list(a, g):
            return MathResult(correct=False, extracted=answer, reason="hedged")
        try:
            same = equal(a, g, algebra)
        except Undecided as e:
            if e.reason == "needs_algebra":
                raise
            return MathResult(correct=False, extracted=answer, reason=e.reason)
        return MathResult(correct=same, extracted=answer, reason="match" if same else "mismatch")
