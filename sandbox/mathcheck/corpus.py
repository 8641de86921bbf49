"""A deterministic corpus of (completion, gold) pairs for benchmarks and agreement checks.

Generated from templates with a seeded RNG, no downloads: ints, thousands separators,
fractions, decimals, LaTeX forms, radicals, expressions, constants, intervals, tuples, sets,
percentages, units, solved forms, equations, hedging and pathological answers, each in a
true and a false variant.

``MV_KNOWN_WRONG`` names the kinds math-verify is known to get wrong; the benchmark reports
agreement with and without them.

``load_outside`` reads the outside corpus (``tests/data/math_outside.jsonl``): pairs from
other projects' graders and evaluation outputs, the measure that does not come from here.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

MV_KNOWN_WRONG = {
    "line_equation": "Math-Verify #60: two different lines ax+by+c=0 judged equal",
    "mathrm_e": "Math-Verify #82/#14: 1+1/\\mathrm{e} judged equal to 1-1/\\mathrm{e}",
    "tiny_value": "Math-Verify #14: tolerance, 1/2^{99} judged equal to 1/2^{98}",
}
"""Kinds where math-verify's verdict is known to be wrong, with the reason."""


@dataclass(frozen=True)
class Pair:
    completion: str
    gold: str
    expected: bool
    kind: str

    @property
    def mv_known_wrong(self) -> bool:
        return self.kind in MV_KNOWN_WRONG


def _wrap(answer: str, style: int) -> str:
    if style == 0:
        return f"Let me work it out step by step.\n\nSo the result is $\\boxed{{{answer}}}$."
    if style == 1:
        return f"<think>reasoning...</think><answer>\\boxed{{{answer}}}</answer>"
    return f"We compute carefully.\n\nThe final answer is ${answer}$."


def build(n_per_kind: int = 40, seed: int = 0) -> list[Pair]:
    rng = random.Random(seed)
    pairs: list[Pair] = []

    def add(answer: str, gold: str, expected: bool, kind: str, style: int | None = None) -> None:
        completion = _wrap(answer, rng.randrange(3) if style is None else style)
        pairs.append(Pair(completion, gold, expected, kind))

    for _ in range(n_per_kind):
        a = rng.randint(-999, 9999)
        add(str(a), str(a), True, "integer")
        add(str(a), str(a + rng.randint(1, 9)), False, "integer")
        t = rng.randint(1, 999) * 1000 + rng.randint(100, 999)
        add(f"{t // 1000},{t % 1000:03d}", str(t), True, "thousands")
        add(f"{t // 1000},{t % 1000:03d}", str(t + 1), False, "thousands")

        p, q = rng.randint(1, 50), rng.randint(2, 50)
        f = Fraction(p, q)
        add(
            f"\\frac{{{f.numerator}}}{{{f.denominator}}}",
            f"{f.numerator}/{f.denominator}",
            True,
            "fraction",
        )
        add(f"\\dfrac{{{p * 2}}}{{{q * 2}}}", f"\\frac{{{p}}}{{{q}}}", True, "fraction")
        add(f"\\frac{{{p + q}}}{{{q}}}", f"\\frac{{{p}}}{{{q}}}", False, "fraction")

        d = rng.choice([2, 4, 5, 8, 10, 20, 25])
        num = rng.randint(1, 99)
        value = Fraction(num, d)
        add(str(value.numerator / value.denominator), f"\\frac{{{num}}}{{{d}}}", True, "decimal")
        add(
            f"{rng.randint(1, 99)}.{rng.randint(1, 9)}",
            f"{rng.randint(100, 200)}.5",
            False,
            "decimal",
        )

        k = rng.randint(2, 9)
        m = rng.choice([2, 3, 5, 6, 7])
        add(f"{k}\\sqrt{{{m}}}", f"\\sqrt{{{m * k * k}}}", True, "radical")
        add(f"{k}\\sqrt{{{m}}}", f"\\sqrt{{{m * k * k + 1}}}", False, "radical")
        add(
            f"\\frac{{{k}}}{{\\sqrt{{{m}}}}}", f"\\frac{{{k}\\sqrt{{{m}}}}}{{{m}}}", True, "radical"
        )

        c = rng.randint(1, 9)
        add(f"(x+{c})^2", f"x^2+{2 * c}x+{c * c}", True, "expression")
        add(f"(x+{c})^2", f"x^2+{2 * c}x+{c * c + 1}", False, "expression")
        add(f"\\frac{{x^2-{c * c}}}{{x-{c}}}", f"x+{c}", True, "expression")
        add(f"(x-{c})(x+{k})", f"x^2+{k - c}x-{c * k}", True, "expression")
        add(f"(x-{c})(x+{k})", f"x^2+{k + c}x-{c * k}", False, "expression")
        add(f"{c}\\sin^2 x + {c}\\cos^2 x", str(c), True, "expression")

        add(f"\\pi/{k}", f"\\frac{{\\pi}}{{{k}}}", True, "constant")
        add(f"{k}-\\frac{{1}}{{e}}", f"{k}-e^{{-1}}", True, "constant")
        add(f"{k}+\\frac{{1}}{{e}}", f"{k}-\\frac{{1}}{{e}}", False, "constant")
        add(f"\\frac{{{k}\\pi}}{{3}}", f"\\frac{{{k + 1}\\pi}}{{3}}", False, "constant")

        lo, hi = sorted(rng.sample(range(-20, 20), 2))
        add(f"[{lo}, {hi})", f"[{lo},{hi})", True, "interval")
        add(f"({lo}, {hi}]", f"[{lo},{hi}]", False, "interval")
        add(f"(-\\infty, {hi}]", f"(-\\infty,{hi}]", True, "interval")
        add(f"(-\\infty, {hi})", f"(-\\infty,{hi}]", False, "interval")
        add(
            f"(-\\infty, {lo}) \\cup ({hi}, \\infty)",
            f"(-\\infty,{lo})\\cup({hi},\\infty)",
            True,
            "interval",
        )

        add(f"({lo}, {hi})", f"({lo},{hi})", True, "tuple")
        add(f"({hi}, {lo})", f"({lo},{hi})", False, "tuple")
        add(f"\\left(\\frac{{1}}{{{k}}}, {hi}\\right)", f"(\\frac{{1}}{{{k}}},{hi})", True, "tuple")

        s = rng.sample(range(1, 30), 3)
        add(
            "\\{" + ", ".join(map(str, s)) + "\\}",
            "\\{" + ",".join(map(str, sorted(s))) + "\\}",
            True,
            "set",
        )
        add(
            "\\{" + ", ".join(map(str, s[:2])) + "\\}",
            "\\{" + ",".join(map(str, sorted(s))) + "\\}",
            False,
            "set",
        )

        pct = rng.randint(1, 99)
        add(f"{pct}\\%", f"{pct}\\%", True, "percent")
        add(f"{pct}\\%", f"{pct + 1}\\%", False, "percent")
        add(
            f"{pct}\\%",
            str(Fraction(pct, 100).numerator / Fraction(pct, 100).denominator),
            True,
            "percent",
        )

        u = rng.randint(2, 500)
        add(f"{u}\\text{{ cm}}", str(u), True, "units")
        add(f"{u} \\text{{ meters}}", str(u), True, "units")
        add(f"{u}\\text{{ cm}}", str(u + 1), False, "units")

        add(f"x = {a}", str(a), True, "solved_form")
        add(f"x = {a}", str(a - 1), False, "solved_form")

        add(f"y = {k}x + {c}", f"y={k}x+{c}", True, "equation")
        add(f"{k}x - y + {c} = 0", f"y={k}x+{c}", True, "equation")
        add(f"y = {k}x + {c + 1}", f"y={k}x+{c}", False, "equation")
        b = rng.randint(1, 9)
        w = rng.randint(1, 9)
        add(f"{w}\\frac{{1}}{{{k}}}", f"\\frac{{{w * k + 1}}}{{{k}}}", True, "mixed_number")
        add(f"{c}+{k}i", f"{k}i+{c}", True, "complex")
        add(f"{c}-{k}i", f"{c}+{k}i", False, "complex")
        add(f"\\text{{({'ABCDE'[c % 5]})}}", "ABCDE"[c % 5], True, "choice")
        add("ABCDE"[k % 5], f"\\text{{({'ABCDE'[(k + 1) % 5]})}}", False, "choice")
        add(
            f"\\begin{{pmatrix}} {c} \\\\ {k} \\end{{pmatrix}}",
            f"\\begin{{pmatrix}}{c}\\\\{k}\\end{{pmatrix}}",
            True,
            "matrix",
        )
        add(
            f"\\begin{{pmatrix}} {c} \\\\ {k + 1} \\end{{pmatrix}}",
            f"\\begin{{pmatrix}}{c}\\\\{k}\\end{{pmatrix}}",
            False,
            "matrix",
        )
        add(f"\\log_{{{m}}} {m**c}", str(c), True, "logarithm")
        exact = Fraction(w, 3 * k) if (3 * k) % 2 and (3 * k) % 5 else Fraction(w, 7)
        approx = f"{float(exact):.6f}"
        if Fraction(approx) != exact:
            add(
                approx, f"\\frac{{{exact.numerator}}}{{{exact.denominator}}}", True, "approximation"
            )
            add(
                f"{float(exact):.2f}",
                f"\\frac{{{exact.numerator}}}{{{exact.denominator}}}",
                False,
                "approximation",
            )
        add(f"{k}x + {b}y + {c + 1} = 0", f"{k}x+{b}y+{c}=0", False, "line_equation", style=2)
        add(f"{2 * k}x + {2 * b}y + {2 * c} = 0", f"{k}x+{b}y+{c}=0", True, "line_equation")

        add(
            f"{k} + \\frac{{1}}{{\\mathrm{{e}}}}",
            f"{k} - \\frac{{1}}{{\\mathrm{{e}}}}",
            False,
            "mathrm_e",
            style=2,
        )
        n = rng.randint(60, 200)
        add(f"\\frac{{1}}{{2^{{{n + 1}}}}}", f"\\frac{{1}}{{2^{{{n}}}}}", False, "tiny_value")
        add(f"2^{{-{n}}}", f"\\frac{{1}}{{2^{{{n}}}}}", True, "tiny_value")

    for i in range(n_per_kind):
        v = 10 + i
        pairs.append(Pair(f"It is \\boxed{{{v}}} or \\boxed{{{v + 1}}}.", str(v), False, "hedged"))
    for text in PATHOLOGICAL:
        pairs.append(Pair(f"So \\boxed{{{text}}}.", "5", False, "pathological"))
    return pairs


PATHOLOGICAL = [
    "2^{2^{2^{2^{100}}}}",
    "100000!",
    "9^{9^{9^{9}}}",
    "10^{1000000}",
    "(" * 200 + "1" + ")" * 200,
    "\\sqrt{" * 80 + "2" + "}" * 80,
    "x" * 5000,
    "(10^{10})!",
    "\\binom{100000}{50000}",
]
"""Answers the screen refuses before any algebra."""


def load_outside(path: Path) -> list[Pair]:
    """The pairs of an outside corpus file (JSON lines with ``completion``, ``gold``,
    ``label`` and ``source``; see tests/data/math_outside.md), the source as the kind.

    Raises ``ValueError`` naming the line of a malformed pair."""
    pairs = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                pair = Pair(row["completion"], row["gold"], row["label"], row["source"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{number}: not a pair: {e}") from None
            if not all(isinstance(x, str) for x in (pair.completion, pair.gold, pair.kind)):
                raise ValueError(f"{path}:{number}: completion, gold and source must be text")
            if not isinstance(pair.expected, bool):
                raise ValueError(f"{path}:{number}: label must be true or false")
            pairs.append(pair)
    return pairs
