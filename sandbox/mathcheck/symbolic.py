"""Algebraic equivalence with sympy; runs only inside the checker's worker processes.

Equal when the difference simplifies to zero, or, failing that, evaluates to zero at
several random points with a tight tolerance (so 1-1/e never equals 1+1/e). Equations are
equal only as the same relation: one side's (lhs - rhs) a non-zero constant multiple of the
other's, so two different lines are never equal.
"""

from __future__ import annotations

import functools
import random
from typing import Any

TOLERANCE = 1e-9


@functools.lru_cache(maxsize=4096)
def parse(text: str) -> Any:
    """LaTeX (or plain) to a sympy expression or equation; raises on failure.

    Cached: the samples of one problem share its gold answer (sympy objects are immutable).
    """
    import sympy
    from latex2sympy2_extended import latex2sympy

    if text.count("=") == 1:
        left, right = text.split("=")
        return sympy.Eq(parse(left), parse(right), evaluate=False)
    try:
        return latex2sympy(text)
    except Exception:
        from sympy.parsing.sympy_parser import (
            convert_xor,
            implicit_multiplication_application,
            parse_expr,
            standard_transformations,
        )

        transformations = (
            *standard_transformations,
            implicit_multiplication_application,
            convert_xor,
        )
        return parse_expr(text, transformations=transformations, evaluate=True)


def _points(symbols: list[Any], n: int) -> list[dict[Any, Any]]:
    import sympy

    rng = random.Random(1234)
    return [{s: sympy.Float(rng.uniform(0.5, 2.5), 30) for s in symbols} for _ in range(n)]


def _value(expr: Any, subs: dict[Any, Any]) -> complex | None:
    try:
        v = complex(expr.evalf(30, subs=subs))
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, AttributeError):
        return None
    if v != v or abs(v) == float("inf"):  # nan or inf: no verdict from this point
        return None
    return v


def numerically_zero(diff: Any, scale: Any) -> bool | None:
    """Zero at every sample point (True), non-zero at one (False), or no verdict (None).

    Non-zero anywhere is proof of inequality; zero at random points of an expression is the
    Schwartz-Zippel argument for identity, with a tolerance far below any rounding a
    submitted answer could get away with.
    """
    symbols = sorted(diff.free_symbols | scale.free_symbols, key=str)
    checked = 0
    for subs in _points(symbols, 4 if symbols else 1):
        d, ref = _value(diff, subs), _value(scale, subs)
        if d is None or ref is None:
            continue
        if abs(d) > TOLERANCE * (1.0 + abs(ref)):
            return False
        checked += 1
    return True if checked else None


def expressions_equal(a: Any, b: Any) -> bool:
    import sympy

    diff = a - b
    if diff == 0:
        return True
    verdict = numerically_zero(diff, b)
    if verdict is not None:
        return verdict
    try:
        return bool(sympy.simplify(diff) == 0)
    except Exception:
        return False


def equations_equal(a: Any, b: Any) -> bool:
    """Same relation: (lhs - rhs) of one is a constant non-zero multiple of the other's."""
    fa, fb = a.lhs - a.rhs, b.lhs - b.rhs
    if fa == 0 or fb == 0:
        return bool(fa == fb)
    symbols = sorted(fa.free_symbols | fb.free_symbols, key=str)
    ratios = []
    for subs in _points(symbols, 5):
        va, vb = _value(fa, subs), _value(fb, subs)
        if va is None or vb is None or abs(vb) < 1e-12:
            continue
        ratios.append(va / vb)
    if len(ratios) < 2:
        return False
    first = ratios[0]
    return abs(first) > 1e-12 and all(abs(r - first) <= TOLERANCE * abs(first) for r in ratios)


def equivalent(answer: str, gold: str) -> bool:
    """Both given as normalised text. Raises on parse failure (the caller reports it)."""
    import sympy

    a, g = parse(answer), parse(gold)
    a_eq, g_eq = isinstance(a, sympy.Equality), isinstance(g, sympy.Equality)
    if a_eq and g_eq:
        return equations_equal(a, g)
    if a_eq:  # "x = 3" against "3": the right-hand side of a solved form
        if isinstance(a.lhs, sympy.Symbol):
            a = a.rhs
        else:
            return False
    if g_eq:
        if isinstance(g.lhs, sympy.Symbol) and not a_eq:
            g = g.rhs
        else:
            return False
    if isinstance(a, sympy.Basic) and isinstance(g, sympy.Basic):
        return expressions_equal(a, g)
    return a == g
