"""Our math checker against math-verify on the same corpus: throughput, agreement, worst case.

math-verify is a dev dependency (``pip install 'rlfleet[dev]'``), imported only when the
benchmark runs; without it the benchmark says so and reports our checker alone. Its timeouts
use ``signal.alarm``, so call ``run_math_bench`` from the main thread.
"""

from __future__ import annotations

import importlib.util
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _labelled(prefix: str, verdicts: list[bool], pairs: list[Pair]) -> dict[str, Any]:
    """Agreement with the labels and false positives (a wrong answer accepted)."""
    wrong_accepted = sum(v and not p.expected for v, p in zip(verdicts, pairs, strict=True))
    return {
        f"{prefix}_agreement_pct": round(100.0 * _right(verdicts, pairs) / len(pairs), 2),
        f"{prefix}_false_positives": wrong_accepted,
    }


def run_math_bench(n: int | None = None) -> dict[str, Any]:
    """Time both checkers over the corpus (``n`` pairs, default all) and compare verdicts;
    then both against the labels of the outside corpus, when this is a source checkout.

    Both run sequentially from this thread, one check at a time: the figures are per-caller
    latency-bound throughput, ours with the worker round trips included.
    """
    pairs = _corpus(n)
    outside = _spread(load_outside(OUTSIDE_CORPUS), n) if OUTSIDE_CORPUS.exists() else []
    mv = _math_verify()
    if mv is not None:
        mv("$1$", "1")  # warm: imports and the LaTeX grammar
    with MathChecker(MathCheckConfig()) as ours:
        ours.check("\\boxed{x+1}", "1+x")  # warm the algebra's parse path
        ours_verdicts, ours_times = _timed(
            lambda p: ours.check(p.completion, p.gold).correct, pairs
        )
        # Pair by pair, ours then math-verify: both see the same load on a shared machine.
        checkers = [lambda p: ours.check(p.completion, p.gold).correct]
        if mv is not None:
            checkers.append(lambda p: mv(p.completion, p.gold))
        outside_runs = _interleaved(checkers, outside)
    alone: dict[str, Any] = {
        "pairs": len(pairs),
        "ours_checks_per_s": round(len(pairs) / sum(ours_times), 1),
        "ours_correct_pct": round(100.0 * _right(ours_verdicts, pairs) / len(pairs), 2),
        "ours_max_check_s": round(max(ours_times), 4),
    }
    if outside:
        outside_verdicts, outside_times = outside_runs[0]
        alone = {
            **alone,
            "outside_pairs": len(outside),
            **_labelled("outside_ours", outside_verdicts, outside),
            "outside_ours_checks_per_s": round(len(outside) / sum(outside_times), 1),
            "outside_ours_max_check_s": round(max(outside_times), 4),
        }
    else:
        missing = f"none: {OUTSIDE_CORPUS.name} comes with a source checkout"
        alone = {**alone, "outside_pairs": missing}
    if mv is None:
        return {**alone, "math_verify": MATH_VERIFY_MISSING}
    if outside:
        mv_outside, mv_outside_times = outside_runs[1]
        alone = {
            **alone,
            **_labelled("outside_math_verify", mv_outside, outside),
            "outside_throughput_ratio": round(sum(mv_outside_times) / sum(outside_times), 2),
        }
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


if __name__ == "__main__":
    import json

    print(json.dumps(run_math_bench(), indent=1))
