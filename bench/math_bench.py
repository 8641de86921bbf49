"""Math checker against math-verify on the same corpus: throughput, agreement, worst case."""

from __future__ import annotations

import time
from typing import Any

from rlfleet.sandbox.mathcheck import MathCheckConfig, MathChecker
from rlfleet.sandbox.mathcheck.corpus import PATHOLOGICAL, build


def _math_verify() -> Any:
    try:
        from math_verify import parse, verify
    except ImportError as e:  # a dev dependency
        raise RuntimeError("the math benchmark needs math-verify: pip install -e '.[dev]'") from e

    def check(completion: str, gold: str) -> bool:
        # Gold answers are bare LaTeX: math-verify extracts LaTeX only between delimiters.
        return bool(verify(parse(f"${gold}$"), parse(completion)))

    return check


def run_math_bench(n: int | None = None) -> dict[str, float | int]:
    pairs = build()
    if n:
        pairs = pairs[:n]
    mv = _math_verify()
    with MathChecker(MathCheckConfig(workers=2)) as ours:
        ours.check(pairs[0].completion, pairs[0].gold)  # warm
        t0 = time.perf_counter()
        ours_results, worst = [], 0.0
        for p in pairs:
            t = time.perf_counter()
            ours_results.append(ours.check(p.completion, p.gold).correct)
            worst = max(worst, time.perf_counter() - t)
        ours_s = time.perf_counter() - t0
        patho_worst = 0.0
        for text in PATHOLOGICAL:
            t = time.perf_counter()
            ours.check(f"\\boxed{{{text}}}", "5")
            patho_worst = max(patho_worst, time.perf_counter() - t)
    t0 = time.perf_counter()
    mv_results = [mv(p.completion, p.gold) for p in pairs]
    mv_s = time.perf_counter() - t0
    comparable = [i for i, p in enumerate(pairs) if not p.mv_known_wrong]
    agree = sum(ours_results[i] == mv_results[i] for i in comparable)
    ours_right = sum(r == p.expected for r, p in zip(ours_results, pairs, strict=True))
    mv_right = sum(r == p.expected for r, p in zip(mv_results, pairs, strict=True))
    return {
        "pairs": len(pairs),
        "ours_checks_per_s": len(pairs) / ours_s,
        "math_verify_checks_per_s": len(pairs) / mv_s,
        "throughput_ratio": mv_s / ours_s,
        "agreement_pct_excl_known_mv_errors": 100.0 * agree / len(comparable),
        "ours_correct_pct": 100.0 * ours_right / len(pairs),
        "math_verify_correct_pct": 100.0 * mv_right / len(pairs),
        "ours_max_check_s": worst,
        "ours_max_pathological_check_s": patho_worst,
    }


def disagreements(n: int | None = None) -> list[tuple[str, str, bool, bool, str]]:
    """(completion, gold, ours, math-verify, kind) where the two differ (for inspection)."""
    pairs = build()[:n] if n else build()
    mv = _math_verify()
    out = []
    with MathChecker() as ours:
        for p in pairs:
            a, b = ours.check(p.completion, p.gold).correct, mv(p.completion, p.gold)
            if a != b:
                out.append((p.completion[-60:], p.gold, a, b, p.kind))
    return out
