"""Algebraic equivalence with sympy; runs only inside the checker's child processes.

The ladder, cheapest proof first:

1. Exact: structurally equal, or the difference is an exact number (``1+10^{-12}`` is not
   ``1``; ``1/2^{99}`` is not ``1/2^{98}``), or the expanded difference is 0.
2. Numeric disproof: the difference is clearly non-zero at one of several random points
   (evaluated with 30 significant digits). This is a proof of inequality and cheap, so it
   runs before ``simplify``: ``1-1/e`` against ``1+1/e`` never gets near a tolerance.
3. Exact again, dearer: ``cancel`` / ``simplify`` of the difference is 0.
4. Numeric agreement, only when simplification could not decide: equal at every point within
   a relative tolerance of 1e-15 (Schwartz-Zippel style identity testing). Tight enough that
   no human-written difference passes, loose enough for 30-digit rounding noise.

An expression holding a division by zero or an indeterminate form (sympy's ``zoo`` and
``nan``) equals nothing: ``7:0`` and ``4:0`` are not the same answer.

Equations are equal only as the same relation: (lhs - rhs) of one is a constant non-zero
multiple of the other's (positive for inequalities), so two different lines are never equal
(Math-Verify #60).
"""

from __future__ import annotations

import functools
import random
import re
import tokenize
from fractions import Fraction
from typing import Any

import sympy
from antlr4 import InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from latex2sympy2_extended import NormalizationConfig, latex2sympy, normalize_latex
from latex2sympy2_extended.antlr_parser import PSLexer
from latex2sympy2_extended.latex2sympy2 import ConversionConfig
from sympy.parsing.sympy_parser import (
    convert_xor,
    implicit_multiplication_application,
    standard_transformations,
)
from sympy.parsing.sympy_parser import parse_expr as sympy_parse_expr
from sympy.polys.polyerrors import BasePolynomialError

from rlfleet.sandbox.mathcheck.fastparse import Unsupported, parse_simple
from rlfleet.sandbox.mathcheck.normalize import (
    MIN_APPROX_DECIMALS,
    correct_to,
    decimals,
    split_top,
)

TOLERANCE = 1e-15
"""Relative difference below which two numeric values count as equal."""
DIGITS = 30
"""Significant digits of numeric evaluation."""
POINTS = 4
"""Random points at which expressions with free symbols are evaluated."""


class ParseError(ValueError):
    """The text is not a formula this module can read."""


# What sympy raises when an operation does not apply to its operands (no inverse, no
# numeric value, an unsupported construct). Only these mean "this step proves nothing";
# anything else is a fault and propagates (the child reports it as ours, never as a verdict).
SYMPY_ERRORS: tuple[type[BaseException], ...] = (
    ArithmeticError,
    AttributeError,
    IndexError,
    KeyError,
    NotImplementedError,
    RecursionError,
    TypeError,
    ValueError,
    BasePolynomialError,
)
# Text that no parser reads: latex2sympy (ParseError), sympy's parse_expr (SyntaxError,
# TokenError, SympifyError: a ValueError), the fast parser's Unsupported, and whatever
# sympy raises while building the expression.
ANSWER_ERRORS: tuple[type[BaseException], ...] = (
    SyntaxError,
    tokenize.TokenError,
    Unsupported,
    *SYMPY_ERRORS,
)

# Plain (non-LaTeX) text that parse_expr may see: numbers, operators, brackets, and names
# that are single letters (optionally with digits) or whitelisted functions. Nothing else
# reaches parse_expr, which evaluates Python code (run only here, under the worker deadline).
_PLAIN = re.compile(r"^[\w+\-*/^().,= ]+$")
_NAME = re.compile(r"[A-Za-z_]\w*")
_FUNCTIONS = ("sqrt", "sin", "cos", "tan", "log", "ln", "exp", "pi", "asin", "acos", "atan")
_PLAIN_HINT = re.compile(r"\*\*|\b(?:" + "|".join(_FUNCTIONS) + r")\s*\(")


def _plain_parse(text: str) -> Any:
    if not _PLAIN.match(text) or "__" in text or re.search(r"\.(?!\d)|(?<!\d)\.", text):
        raise ValueError("not a plain expression")
    local: dict[str, Any] = {
        "sqrt": sympy.sqrt,
        "sin": sympy.sin,
        "cos": sympy.cos,
        "tan": sympy.tan,
        "log": sympy.log,
        "ln": sympy.log,
        "exp": sympy.exp,
        "pi": sympy.pi,
        "asin": sympy.asin,
        "acos": sympy.acos,
        "atan": sympy.atan,
        "e": sympy.E,
    }
    for name in _NAME.findall(text):
        if name not in local:
            if not re.fullmatch(r"[A-Za-z]\d*", name):
                raise ValueError(f"unknown name {name!r}")
            local[name] = sympy.Symbol(name)
    transformations = (*standard_transformations, implicit_multiplication_application, convert_xor)
    return sympy_parse_expr(text, local_dict=local, transformations=transformations)


_NORMALIZATION = NormalizationConfig()
"""latex2sympy's own default: the text its parser reads is ``normalize_latex`` of this."""


class _Unlexable(Exception):
    pass


class _StopAtError(ErrorListener):
    def syntaxError(self, *args: Any) -> None:
        raise _Unlexable


def _lexes(text: str) -> bool:
    """Whether latex2sympy's lexer reads all of ``text`` (already normalised).

    Where it cannot, latex2sympy fails: its grammar's start rule ends at end of input, so
    every token is read, and its error listener raises at the first error of the lexer as
    of the parser. Lexing alone costs a fifth of a failing parse (whose prediction explores
    the grammar before it gives up): 0.15 against 0.8 ms for the answers of a model that
    writes no mathematics yet. Text that lexes is lexed again by latex2sympy, a small part
    of a parse that succeeds."""
    lexer = PSLexer(InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_StopAtError())
    try:
        while lexer.nextToken().type != Token.EOF:
            pass
    except _Unlexable:
        return False
    return True


def _latex_parse(text: str) -> Any:
    try:
        normalized = normalize_latex(text, _NORMALIZATION)
        if not _lexes(normalized):
            raise ParseError(f"a character latex2sympy's lexer does not read: {text!r}"[:200])
        # Case matters in mathematics (X and x are different answers).
        return latex2sympy(
            normalized,
            normalization_config=None,  # (done above, with latex2sympy's default)
            conversion_config=ConversionConfig(lowercase_symbols=False),
        )
    except Exception as e:
        # latex2sympy reports text it cannot read with plain ``Exception``s; anything of
        # another type is a fault of ours and must not pass for an unreadable answer.
        if type(e) is Exception:
            raise ParseError(str(e)) from None
        raise


def _top_level_equals(text: str) -> int | None:
    """Index of the one "=" outside brackets (not part of <=, >=), or None."""
    found, depth = [], 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "=" and depth == 0:
            found.append(i)
    if len(found) != 1:
        return None
    i = found[0]
    if (i and text[i - 1] in "<>!") or text[i + 1 : i + 2] in ("<", ">"):
        return None
    return i


@functools.lru_cache(maxsize=4096)
def parse(text: str) -> Any:
    """LaTeX (or plain) text to a sympy expression, set or relation; raises on failure.

    Cached: the samples of one problem share its gold answer (sympy objects are immutable).
    """

    alternatives = split_top(text, "\\lor")
    if len(alternatives) > 1:  # "x<1 \\lor x>2": the checker joins inequalities so
        return sympy.Or(*(parse(part) for part in alternatives))
    split = _top_level_equals(text)
    if split is not None:
        return sympy.Eq(parse(text[:split]), parse(text[split + 1 :]), evaluate=False)
    try:
        return parse_simple(text)
    except Unsupported:
        pass
    first, second = _latex_parse, _plain_parse
    if "\\" not in text and _PLAIN_HINT.search(text):
        first, second = _plain_parse, _latex_parse  # "sqrt(8)" is not s*q*r*t*8
    try:
        return first(text)
    except ANSWER_ERRORS:
        return second(text)


def _points(symbols: list[Any], n: int) -> list[dict[Any, Any]]:

    # Fixed seed: a verdict must not change from one run to the next. Every other point is
    # negative, so |x| is not x and sqrt(x^2) is not x (equal for x > 0 only); values of
    # irrational look avoid landing on roots and poles by accident.
    rng = random.Random(1234)
    return [
        {s: sympy.Float((-1) ** k * rng.uniform(0.5, 2.5), DIGITS) for s in symbols}
        for k in range(n)
    ]


def _value(expr: Any, subs: dict[Any, Any]) -> Any:
    """A sympy number (mpmath precision: 1/2004! does not underflow to 0.0) or None."""
    try:
        v = expr.evalf(DIGITS, subs=subs)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, AttributeError):
        return None
    if not v.is_number or v.is_finite is not True:  # nan, zoo, inf: no verdict from here
        return None
    return v


def _close(a: Any, b: Any) -> bool:
    try:
        return bool(abs(a - b) <= TOLERANCE * max(abs(a), abs(b)))
    except TypeError:
        return False


def _numeric(a: Any, b: Any) -> bool | None:
    """Equal at every sample point (True), different at one (False), or no verdict (None)."""
    symbols = sorted(a.free_symbols | b.free_symbols, key=str)
    checked = 0
    for subs in _points(symbols, POINTS if symbols else 1):
        va, vb = _value(a, subs), _value(b, subs)
        if va is None or vb is None:
            continue
        if not _close(va, vb):
            return False
        checked += 1
    return True if checked else None


def _exactly_zero(diff: Any) -> bool:

    for step in (sympy.cancel, sympy.simplify):
        try:
            if step(diff) == 0:
                return True
        except SYMPY_ERRORS:
            continue
    return False


def expressions_equal(a: Any, b: Any) -> bool:

    if a == b:
        return True
    if isinstance(a, sympy.Set) or isinstance(b, sympy.Set):
        return _sets_equal(a, b)
    try:
        diff = a - b
    except TypeError:
        return False  # booleans, tuples: no difference, and not structurally equal
    if isinstance(diff, sympy.MatrixBase):
        return a.shape == b.shape and all(
            expressions_equal(x, y) for x, y in zip(a, b, strict=True)
        )
    if diff == 0:
        return True
    if not diff.free_symbols:
        try:
            exact = diff.doit()  # 2004! as the integer it is
        except SYMPY_ERRORS:
            exact = diff
        if exact.is_Rational:
            return bool(exact == 0)  # an exact number: never "close enough"
    try:
        if sympy.expand(diff) == 0:  # cheap and exact: settles most polynomial identities
            return True
    except SYMPY_ERRORS:
        pass
    numeric = _numeric(a, b)
    if numeric is not None:
        # Equal at every sample point, or different at one, decides; cancel and simplify
        # (slow: tenths of a second) only decide what no point could be evaluated at.
        return numeric
    return _exactly_zero(diff)


def _sets_equal(a: Any, b: Any) -> bool:

    if not (isinstance(a, sympy.Set) and isinstance(b, sympy.Set)):
        return False
    if isinstance(a, sympy.FiniteSet) and isinstance(b, sympy.FiniteSet):
        if len(a) != len(b):
            return False
        left = list(b)
        for x in a:
            for i, y in enumerate(left):
                if expressions_equal(x, y):
                    del left[i]
                    break
            else:
                return False
        return True
    try:
        return bool(a.symmetric_difference(b) == sympy.EmptySet)
    except SYMPY_ERRORS:
        return False


def _relation(r: Any) -> tuple[Any, str]:
    """(f, kind) with the relation read as ``f = 0``, ``f > 0`` or ``f >= 0``."""

    if isinstance(r, sympy.Equality):
        return r.lhs - r.rhs, "="
    if isinstance(r, sympy.StrictGreaterThan | sympy.GreaterThan):
        return r.lhs - r.rhs, ">" if isinstance(r, sympy.StrictGreaterThan) else ">="
    if isinstance(r, sympy.StrictLessThan | sympy.LessThan):
        return r.rhs - r.lhs, ">" if isinstance(r, sympy.StrictLessThan) else ">="
    raise ValueError(f"not a relation: {r}")


def relations_equal(a: Any, b: Any) -> bool:
    """Same relation: (lhs - rhs) of one a constant non-zero multiple of the other's."""

    (fa, ka), (fb, kb) = _relation(a), _relation(b)
    if ka != kb:
        return False
    if fa == 0 or fb == 0:
        return bool(fa == fb)
    try:
        ratio = sympy.cancel(fa / fb)
    except SYMPY_ERRORS:
        ratio = None
    if ratio is not None and ratio.is_number:
        value = _value(ratio, {})
        if value is None or value == 0:
            return False
        return ka == "=" or bool(value.is_extended_real and value > 0)
    # The ratio did not cancel to a constant: compare it at several points.
    symbols = sorted(fa.free_symbols | fb.free_symbols, key=str)
    ratios = []
    for subs in _points(symbols, POINTS + 1):
        va, vb = _value(fa, subs), _value(fb, subs)
        if va is None or vb is None or vb == 0:
            continue
        ratios.append(va / vb)
    if len(ratios) < 2 or ratios[0] == 0:
        return False
    if ka != "=" and not (ratios[0].is_extended_real and ratios[0] > 0):
        return False
    return all(_close(r, ratios[0]) for r in ratios)


def _is_name(expr: Any) -> bool:
    """A symbol or an undefined function of symbols: the x of x = 3, the f(x) of f(x) = 2x."""

    if isinstance(expr, sympy.Symbol):
        return True
    return isinstance(expr, sympy.core.function.AppliedUndef)


def equivalent(answer: str, gold: str) -> bool:
    """Both given as normalised text. Raises on parse failure (the caller reports it)."""

    a, g = _imaginary_unit(parse(answer)), _imaginary_unit(parse(gold))
    if _undefined(a) or _undefined(g):
        return False  # 1/0 and 2/0 are both zoo: an undefined value equals nothing
    a_rel, g_rel = (
        isinstance(a, sympy.core.relational.Relational),
        isinstance(g, sympy.core.relational.Relational),
    )
    if a_rel and g_rel:
        return relations_equal(a, g)
    # "x >= 3" against "[3, \infty)", "-1 < x \le 4" against "(-1, 4]", "2 \le |t| \le 3"
    # against "[-3,-2] \cup [2,3]": the set of reals the inequality describes.
    if _is_inequality(a) or _is_inequality(g):
        left = _real_set(a) if _is_inequality(a) else a
        right = _real_set(g) if _is_inequality(g) else g
        return _sets_equal(left, right)
    # "x = 3" against "3" (either way round): the right-hand side of a solved form.
    if a_rel:
        if not (isinstance(a, sympy.Equality) and _is_name(a.lhs)):
            return False
        a = a.rhs
    if g_rel:
        if not (isinstance(g, sympy.Equality) and _is_name(g.lhs)):
            return False
        g = g.rhs
    if isinstance(a, sympy.Basic) and isinstance(g, sympy.Basic):
        for text, exact in ((answer, g), (gold, a)):
            verdict = _approximation_equal(text, exact)
            if verdict is not None:
                return verdict
        return expressions_equal(a, g)
    return bool(a == g)


def _undefined(expr: Any) -> bool:
    """Whether the expression holds a division by zero or an indeterminate form (zoo, nan)."""
    return isinstance(expr, sympy.Basic) and expr.has(sympy.zoo, sympy.nan)


def _imaginary_unit(expr: Any) -> Any:
    """A free ``i`` is the imaginary unit (3+2i, e^{i pi}); a summation index is bound."""

    free: set[Any] = getattr(expr, "free_symbols", set())
    i = sympy.Symbol("i")
    return expr.subs(i, sympy.I) if i in free else expr


def _is_inequality(expr: Any) -> bool:
    """An inequality, a chain of them (``-1 < x \\le 4``), or an and/or of them."""
    if isinstance(expr, sympy.And | sympy.Or):
        return True
    return isinstance(expr, sympy.core.relational.Relational) and not isinstance(
        expr, sympy.Equality
    )


def _real_set(condition: Any) -> Any:
    """The set of reals satisfying a condition in one variable; None when there is no such
    set (several variables, or one sympy cannot solve)."""
    if len(condition.free_symbols) != 1:
        return None
    try:
        return condition.as_set()
    except SYMPY_ERRORS:
        return None


def _approximation_equal(text: str, exact: Any) -> bool | None:
    """The approximation rule of ``normalize`` for irrational constants: a decimal with
    enough decimals matches sqrt 2 or pi when correct to its last decimal; None when the
    rule does not apply."""
    d = decimals(text)
    if d < MIN_APPROX_DECIMALS or exact.free_symbols or not exact.is_number:
        return None
    if exact.is_Rational:
        return None  # rationals were settled exactly before the workers
    try:
        value = exact.evalf(max(DIGITS, d + 10))
    except SYMPY_ERRORS:
        return None
    if not value.is_number or value.is_finite is not True:
        return None
    # The value's decimal digits, d + 10 of them, as an exact fraction to round or truncate.
    try:
        return correct_to(Fraction(text), Fraction(str(value)), d)
    except ValueError:
        return None  # complex: no decimal approximates it
