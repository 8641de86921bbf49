"""A deterministic corpus of (completion, gold) pairs for benchmarks and agreement checks.

Generated from templates, no downloads. ``mv_known_wrong`` marks the kinds math-verify is
known to get wrong (Math-Verify #60: different lines judged equal; #82: 1-1/e judged equal
to 1+1/e), excluded when measuring agreement.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Pair:
    completion: str
    gold: str
    expected: bool
    kind: str
    mv_known_wrong: bool = False


def _box(answer: str, style: int) -> str:
    if style == 0:
        return f"Let me work it out step by step.\n\nSo the result is $\\boxed{{{answer}}}$."
    if style == 1:
        return f"<think>reasoning...</think><answer>\\boxed{{{answer}}}</answer>"
    return f"We compute carefully.\n\nThe final answer is ${answer}$."


def build(n_per_kind: int = 60, seed: int = 0) -> list[Pair]:
    rng = random.Random(seed)
    pairs: list[Pair] = []

    def add(answer: str, gold: str, expected: bool, kind: str, known: bool = False) -> None:
        style = rng.randrange(3)
        pairs.append(Pair(_box(answer, style), gold, expected, kind, known))

    for _ in range(n_per_kind):
        a = rng.randint(-999, 9999)
        add(str(a), str(a), True, "integer")
        add(str(a), str(a + rng.randint(1, 9)), False, "integer")
        p, q = rng.randint(1, 50), rng.randint(2, 50)
        f = Fraction(p, q)
        add(
            f"\\frac{{{f.numerator}}}{{{f.denominator}}}",
            f"{f.numerator}/{f.denominator}",
            True,
            "fraction",
        )
        add(f"\\frac{{{p * 2}}}{{{q * 2}}}", f"\\frac{{{p}}}{{{q}}}", True, "fraction")
        add(f"\\frac{{{p + 1}}}{{{q}}}", f"\\frac{{{p}}}{{{q}}}", False, "fraction")
        d = rng.choice([2, 4, 5, 8, 10, 20, 25])
        num = rng.randint(1, 99)
        add(
            str(Fraction(num, d).numerator / Fraction(num, d).denominator),
            f"\\frac{{{num}}}{{{d}}}",
            True,
            "decimal",
        )
        add(
            f"{rng.randint(1, 99)}.{rng.randint(1, 9)}",
            f"{rng.randint(100, 200)}.5",
            False,
            "decimal",
        )
        k = rng.randint(2, 9)
        add(f"{k}\\sqrt{{2}}", f"\\sqrt{{{2 * k * k}}}", True, "radical")
        add(f"{k}\\sqrt{{3}}", f"\\sqrt{{{3 * k * k + 1}}}", False, "radical")
        c = rng.randint(1, 9)
        add(f"(x+{c})^2", f"x^2+{2 * c}x+{c * c}", True, "expression")
        add(f"(x+{c})^2", f"x^2+{2 * c}x+{c * c + 1}", False, "expression")
        add(f"\\frac{{x^2-{c * c}}}{{x-{c}}}", f"x+{c}", True, "expression")
        lo, hi = sorted(rng.sample(range(-20, 20), 2))
        add(f"[{lo}, {hi})", f"[{lo},{hi})", True, "interval")
        add(f"({lo}, {hi}]", f"[{lo},{hi}]", False, "interval")
        add(f"(-\\infty, {hi}]", f"(-\\infty,{hi}]", True, "interval")
        add(f"({lo}, {hi})", f"({lo},{hi})", True, "tuple")
        add(f"({hi}, {lo})", f"({lo},{hi})", False, "tuple")
        s = rng.sample(range(1, 30), 3)
        add(
            "\\{" + ", ".join(map(str, s)) + "\\}",
            "\\{" + ",".join(map(str, sorted(s))) + "\\}",
            True,
            "set",
        )
        pct = rng.randint(1, 99)
        add(f"{pct}\\%", f"{pct}\\%", True, "percent")
        add(f"{pct}\\%", f"{pct + 1}\\%", False, "percent")
        u = rng.randint(2, 500)
        add(f"{u}\\text{{ cm}}", str(u), True, "units")
        add(f"{u} meters", str(u), True, "units")
        t = rng.randint(1, 999) * 1000 + rng.randint(100, 999)
        add(f"{t // 1000},{t % 1000:03d}", str(t), True, "thousands")
        add(f"x = {a}", str(a), True, "assignment")
        add(f"\\pi/{k}", f"\\frac{{\\pi}}{{{k}}}", True, "constant")
        add("1-\\frac{1}{e}", "1-\\frac{1}{e}", True, "constant")
        add(f"y = {k}x + {c}", f"y={k}x+{c}", True, "equation")
        add(f"y = {k}x + {c + 1}", f"y={k}x+{c}", False, "equation", known=True)  # MV #60
        add("1+\\frac{1}{e}", "1-\\frac{1}{e}", False, "constant", known=True)  # MV #82
    return pairs


PATHOLOGICAL = [
    "2^{2^{2^{2^{100}}}}",
    "100000!",
    "9^{9^{9^{9}}}",
    "10^{1000000}",
    "(" * 200 + "1" + ")" * 200,
    "\\sqrt{" * 80 + "2" + "}" * 80,
    "x" * 5000,
]
