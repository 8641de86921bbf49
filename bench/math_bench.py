"""Our math checker against math-verify on the same corpus: throughput, agreement, worst case.

``run_math_bench`` (the math part of ``rlfleet bench sandbox``) times both on the project's
template corpus; ``run_outside_bench`` (``rlfleet bench math``) measures both against the
hand-checked labels of the outside corpus, source by source.

math-verify is a dev dependency (``pip install 'rlfleet[dev]'``), imported only when the
benchmark runs; without it the benchmark says so and reports our checker alone. Its timeouts
use ``signal.alarm``, so call both from the main thread.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from rlfleet.sandbox.mathcheck import MathCheckConfig, MathChecker
from rlfleet.sandbox.mathcheck.corpus import MV_KNOWN_WRONG, Pair, build, load_outside

MATH_VERIFY_MISSING = "not installed: pip install 'rlfleet[dev]' to compare against it"
OUTSIDE_CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "math_outside.jsonl"
"""Pairs the project did not write (tests/data/math_outside.md); in a source checkout only."""


def _math_verify() -> Callable[[str, str], bool] | None:
    """math-verify's check, or None when it is not installed."""
    if importlib.util.find_spec("math_verify") is None:
        return None
    from math_verify import parse, verify

    def check(completion: str, gold: str) -> bool:
        # Gold answers are bare LaTeX: math-verify extracts LaTeX only between delimiters.
        return bool(verify(parse(f"${gold}$"), parse(completion)))

    return check


def _corpus(n: int | None) -> list[Pair]:
    return _spread(build(), n)


def _spread(pairs: list[Pair], n: int | None) -> list[Pair]:
    if n is not None and n < len(pairs):
        # An even spread over the kinds rather than the first n (which are all one round).
        step = len(pairs) / n
        pairs = [pairs[int(i * step)] for i in range(n)]
    return pairs


def run_math_bench(n: int | None = None) -> dict[str, Any]:
    """Time both checkers over the template corpus (``n`` pairs, default all) and compare
    their verdicts (the outside corpus: ``run_outside_bench``, ``rlfleet bench math``).

    Both run sequentially from this thread, one check at a time: the figures are per-caller
    latency-bound throughput, ours with the worker round trips included.
    """
    pairs = _corpus(n)
    mv = _math_verify()
    if mv is not None:
        mv("$1$", "1")  # warm: imports and the LaTeX grammar
    with MathChecker(MathCheckConfig()) as ours:
        ours.check("\\boxed{x+1}", "1+x")  # warm the algebra's parse path
        ours_verdicts, ours_times = _timed(
            lambda p: ours.check(p.completion, p.gold).correct, pairs
        )
    alone: dict[str, Any] = {
        "pairs": len(pairs),
        "ours_checks_per_s": round(len(pairs) / sum(ours_times), 1),
        "ours_correct_pct": round(100.0 * _right(ours_verdicts, pairs) / len(pairs), 2),
        "ours_max_check_s": round(max(ours_times), 4),
    }
    # The outside corpus, labelled by hand, has its own command: the harder part of it
    # takes minutes.
    alone["outside_corpus"] = "rlfleet bench math"
    if mv is None:
        return {**alone, "math_verify": MATH_VERIFY_MISSING}
    mv_verdicts, mv_times = _timed(lambda p: mv(p.completion, p.gold), pairs)
    ours_s, mv_s = sum(ours_times), sum(mv_times)
    # math-verify spends its own 5 s timeouts on pathological answers; without them the
    # ratio is the one for ordinary answers.
    ordinary = [i for i, p in enumerate(pairs) if p.kind != "pathological"]
    ours_ordinary_s = sum(ours_times[i] for i in ordinary)
    mv_ordinary_s = sum(mv_times[i] for i in ordinary)

    same = [a == b for a, b in zip(ours_verdicts, mv_verdicts, strict=True)]
    beyond_known = [s for s, p in zip(same, pairs, strict=True) if not p.mv_known_wrong]
    disagreeing = Counter(p.kind for s, p in zip(same, pairs, strict=True) if not s)
    return {
        **alone,
        "math_verify_checks_per_s": round(len(pairs) / mv_s, 1),
        "throughput_ratio": round(mv_s / ours_s, 2),
        "throughput_ratio_without_pathological": round(mv_ordinary_s / ours_ordinary_s, 2),
        "agreement_pct": round(100.0 * sum(same) / len(pairs), 2),
        "agreement_pct_outside_known_mv_errors": round(
            100.0 * sum(beyond_known) / len(beyond_known), 2
        ),
        "mv_known_wrong_kinds": MV_KNOWN_WRONG,
        "disagreements_by_kind": dict(disagreeing),
        "math_verify_correct_pct": round(100.0 * _right(mv_verdicts, pairs) / len(pairs), 2),
        "math_verify_max_check_s": round(max(mv_times), 4),
    }


def _timed(check: Callable[[Pair], bool], pairs: list[Pair]) -> tuple[list[bool], list[float]]:
    verdicts, times = [], []
    for p in pairs:
        start = time.perf_counter()
        try:
            verdicts.append(bool(check(p)))
        except Exception:  # math-verify raises on some inputs: count it as "not equal"
            # (benchmark only: no reward is decided here)
            verdicts.append(False)
        times.append(time.perf_counter() - start)
    return verdicts, times


def _interleaved(
    checks: list[Callable[[Pair], bool]], pairs: list[Pair]
) -> list[tuple[list[bool], list[float]]]:
    """(verdicts, times) of each check, run one after the other on each pair in turn."""
    runs: list[tuple[list[bool], list[float]]] = [([], []) for _ in checks]
    for p in pairs:
        for check, (verdicts, times) in zip(checks, runs, strict=True):
            verdict, took = _timed(check, [p])
            verdicts += verdict
            times += took
    return runs


def _right(verdicts: list[bool], pairs: list[Pair]) -> int:
    return sum(v == p.expected for v, p in zip(verdicts, pairs, strict=True))


def disagreements(n: int | None = None) -> list[tuple[str, str, bool, bool, str]]:
    """(answer region, gold, ours, math-verify, kind) where the two differ, for inspection."""
    mv = _math_verify()
    if mv is None:
        raise RuntimeError(f"math-verify is {MATH_VERIFY_MISSING}")
    out = []
    with MathChecker() as ours:
        for p in _corpus(n):
            a, b = ours.check(p.completion, p.gold).correct, mv(p.completion, p.gold)
            if a != b:
                out.append((p.completion[-60:], p.gold, a, b, p.kind))
    return out


@dataclass(frozen=True, kw_only=True)
class SourceFigures:
    """One checker on the pairs of one source (or of the whole corpus)."""

    pairs: int
    agreeing: int
    """Verdicts equal to the pair's label."""
    false_positives: int
    """Wrong answers accepted."""
    false_negatives: int
    """Right answers refused."""

    @property
    def agreement_pct(self) -> float:
        return 100.0 * self.agreeing / self.pairs


@dataclass(frozen=True, kw_only=True)
class CheckerFigures:
    """One checker on the outside corpus."""

    total: SourceFigures
    by_source: dict[str, SourceFigures]
    seconds: float
    """Time of all its checks together."""
    max_check_s: float
    """Its slowest single check."""

    @property
    def checks_per_s(self) -> float:
        return self.total.pairs / self.seconds


@dataclass(frozen=True, kw_only=True)
class OutsideBench:
    """Both checkers on the same pairs of an outside corpus, checked alternately."""

    corpus: Path
    pairs: int
    ours: CheckerFigures
    math_verify: CheckerFigures | None
    """None when math-verify is not installed."""

    @property
    def throughput_ratio(self) -> float | None:
        """math-verify's time over ours on the same pairs (how many times faster ours is)."""
        if self.math_verify is None:
            return None
        return self.math_verify.seconds / self.ours.seconds


def _figures(verdicts: list[bool], pairs: list[Pair]) -> SourceFigures:
    return SourceFigures(
        pairs=len(pairs),
        agreeing=_right(verdicts, pairs),
        false_positives=sum(v and not p.expected for v, p in zip(verdicts, pairs, strict=True)),
        false_negatives=sum(p.expected and not v for v, p in zip(verdicts, pairs, strict=True)),
    )


def _checker_figures(verdicts: list[bool], times: list[float], pairs: list[Pair]) -> CheckerFigures:
    sources = sorted({p.kind for p in pairs})
    by_source = {}
    for source in sources:
        picked = [i for i, p in enumerate(pairs) if p.kind == source]
        by_source[source] = _figures([verdicts[i] for i in picked], [pairs[i] for i in picked])
    return CheckerFigures(
        total=_figures(verdicts, pairs),
        by_source=by_source,
        seconds=sum(times),
        max_check_s=max(times),
    )


def run_outside_bench(corpus: Path = OUTSIDE_CORPUS, n: int | None = None) -> OutsideBench:
    """Our checker and math-verify on the pairs of ``corpus`` (``n`` of them, evenly spread;
    default all), pair by pair one after the other, against the pairs' labels.

    Raises ``ValueError`` naming a malformed line, ``FileNotFoundError`` for no corpus."""
    pairs = _spread(load_outside(corpus), n)
    if not pairs:
        raise ValueError(f"{corpus}: no pairs")
    mv = _math_verify()
    if mv is not None:
        mv("$1$", "1")  # warm: imports and the LaTeX grammar
    with MathChecker(MathCheckConfig()) as ours:
        ours.check("\\boxed{x+1}", "1+x")  # warm the algebra's parse path
        checkers = [lambda p: ours.check(p.completion, p.gold).correct]
        if mv is not None:
            checkers.append(lambda p: mv(p.completion, p.gold))
        runs = _interleaved(checkers, pairs)
    figures = [_checker_figures(verdicts, times, pairs) for verdicts, times in runs]
    return OutsideBench(
        corpus=corpus,
        pairs=len(pairs),
        ours=figures[0],
        math_verify=figures[1] if mv is not None else None,
    )


def print_outside_bench(report: OutsideBench, out: TextIO = sys.stdout) -> None:
    """The figures of ``run_outside_bench`` as lines: both checkers, then source by source."""
    rows = [("ours", report.ours)]
    if report.math_verify is not None:
        rows.append(("math-verify", report.math_verify))
    print(f"# math: {report.pairs} labelled pairs of {report.corpus}", file=out)
    print(
        f"{'checker':12} {'agreement':>10} {'false_pos':>9} {'false_neg':>9} "
        f"{'checks/s':>9} {'max_check_s':>11}",
        file=out,
    )
    for name, f in rows:
        print(
            f"{name:12} {f.total.agreement_pct:9.2f}% {f.total.false_positives:9d} "
            f"{f.total.false_negatives:9d} {f.checks_per_s:9.1f} {f.max_check_s:11.4f}",
            file=out,
        )
    if report.math_verify is None:
        print(f"math-verify: {MATH_VERIFY_MISSING}", file=out)
    else:
        print(
            f"throughput ratio (math-verify time / ours): {report.throughput_ratio:.2f}", file=out
        )
    print("# by source: agreement % (false positives)", file=out)
    print(f"{'source':36} {'pairs':>6} " + " ".join(f"{name:>16}" for name, _ in rows), file=out)
    for source, mine in report.ours.by_source.items():
        cells = [mine] + [f.by_source[source] for _, f in rows[1:]]
        shown = " ".join(f"{c.agreement_pct:9.2f}% ({c.false_positives:3d})" for c in cells)
        print(f"{source:36} {mine.pairs:6d} {shown}", file=out)


if __name__ == "__main__":
    import json

    print(json.dumps(run_math_bench(), indent=1))
