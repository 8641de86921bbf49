"""Compare a normalised answer with a normalised gold: cheap rules in-process, algebra through
a callback (the worker pool) only when the cheap rules cannot decide.

Fast paths, none of which needs sympy or a round trip to a worker: the same normalised text;
two plain numbers (exact rationals); ``x = 3`` against ``3``. Tuples, intervals, sets and
unions and matrices are split here and compared element by element, so brackets (open/closed ends,
tuple order) are decided by exact rules rather than by a parser's reading of ``(1,2)``.
Times of day compare as times (``clock``). The rules are written out in docs/math.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from rlfleet.sandbox.mathcheck.clock import seconds_of_day
from rlfleet.sandbox.mathcheck.matrix import parse_matrix
from rlfleet.sandbox.mathcheck.normalize import (
    Norm,
    Struct,
    named_value,
    numbers_equal,
    parse_struct,
    split_union,
    strip_assignment,
    to_fraction,
)
from rlfleet.sandbox.mathcheck.screen import MAX_LENGTH, pathological

_INEQUALITY = re.compile(r"[<>]|\\[lg]eq?\b|\\[lg]t\b")

Algebra = Callable[[str, str], bool]
"""Decides answer == gold by algebra; raises ``Undecided`` when it cannot."""


class Undecided(Exception):
    """No verdict: ``reason`` is "timeout", "rejected", "parse_error" or "needs_algebra"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_candidate_list(answer: Norm, gold: Norm) -> bool:
    """A set or bare list of values offered against a single-valued gold: hedging."""
    struct = parse_struct(answer.text)
    if struct is None or not struct.unordered or len(struct.items) < 2:
        return False
    value = strip_assignment(gold.text)  # (x,y)=(1,5): the tuple is what the gold gives
    return parse_struct(value) is None and split_union(value) is None


def equal(answer: Norm, gold: Norm, algebra: Algebra) -> bool:
    if answer.text == gold.text and answer.percent == gold.percent:
        return True
    ta, tg = seconds_of_day(answer.text), seconds_of_day(gold.text)
    if ta is not None or tg is not None:
        # A time of day equals only the same time of day ("7:00" is not the ratio 7:0).
        return ta == tg
    fa, fg = to_fraction(answer.text), to_fraction(gold.text)
    if fa is not None and fg is not None:
        return numbers_equal(answer, gold, fa, fg)
    if len(answer.text) > MAX_LENGTH or len(gold.text) > MAX_LENGTH:
        raise Undecided("rejected")  # bounds the element-by-element work below too
    values = _named_values(answer, gold)
    if values is not None:
        return equal(values[0], values[1], algebra)
    ma, mg = parse_matrix(answer.text), parse_matrix(gold.text)
    if ma is not None and mg is not None:
        # Entry by entry, each with the rules of a single answer.
        if ma.kind != mg.kind or ma.shape != mg.shape:
            return False
        pairs = zip(ma.rows, mg.rows, strict=True)
        return all(
            equal(Norm(x), Norm(y), algebra)
            for row_a, row_g in pairs
            for x, y in zip(row_a, row_g, strict=True)
        )
    ua, ug = split_union(answer.text), split_union(gold.text)
    if ua is not None and ug is not None:
        return _unordered_equal(ua, ug, algebra)
    sa, sg = parse_struct(answer.text), parse_struct(gold.text)
    # A set of one element against anything but a set: the element ("\{5\}" and "5").
    if sa is not None and _singleton(sa) and not _is_set(sg):
        return equal(Norm(sa.items[0]), gold, algebra)
    if sg is not None and _singleton(sg) and not _is_set(sa):
        return equal(answer, Norm(sg.items[0]), algebra)
    if sa is not None and sg is not None:
        return _struct_equal(sa, sg, algebra)
    if sa is not None or sg is not None:
        # A tuple or interval against a single value is a mismatch, unless the value is an
        # inequality describing that interval ("x \geq 3" and "[3, \infty)").
        single = answer.text if sa is None else gold.text
        if not _INEQUALITY.search(single):
            return False
        return _algebra_of(answer.text, gold.text, algebra)
    return _algebra_of(answer.text, gold.text, algebra)


def _named_values(answer: Norm, gold: Norm) -> tuple[Norm, Norm] | None:
    """The values to compare when one side or both name what they give (``BC = 7``), or
    None when the names stay (two equations).

    The value of a name is the answer: ``x = 3`` against ``3``, ``(x,y)=(1,5)`` against
    ``(1,5)``. A one-letter name may instead be the variable of an equation
    (``2y = 4x + 2`` against ``y = 2x + 1``), so it is dropped only when the other side has
    no ``=`` at all, or names the same thing; the other names (``BC``, ``(x,y)``, ``a:b``)
    are never variables and are dropped whatever the other side is."""
    na, ng = named_value(answer.text), named_value(gold.text)
    if na is None and ng is None:
        return None
    if na is not None and ng is not None:
        if na.name != ng.name and na.variable and ng.variable:
            return None  # x = 3 against y = 3: two equations, for the algebra
    else:
        named, other = (na, gold.text) if na is not None else (ng, answer.text)
        if named is not None and named.variable and "=" in other:
            return None  # 2y = 4x + 2 against y = 2x + 1: two equations
    a = Norm(na.value, answer.percent) if na is not None else answer
    g = Norm(ng.value, gold.percent) if ng is not None else gold
    return a, g


def _is_set(struct: Struct | None) -> bool:
    return struct is not None and struct.open == "\\{"


def _singleton(struct: Struct) -> bool:
    return _is_set(struct) and len(struct.items) == 1


def _algebra_of(a_text: str, g_text: str, algebra: Algebra) -> bool:
    if pathological(a_text) or pathological(g_text):
        raise Undecided("rejected")
    return algebra(a_text, g_text)


def _struct_equal(a: Struct, g: Struct, algebra: Algebra) -> bool:
    if len(a.items) != len(g.items):
        return False
    # "a=2, b=3" against "(2,3)" (either way round): named values given in order are the
    # tuple.
    for named, tuple_ in ((a, g), (g, a)):
        values = [strip_assignment(x) for x in named.items]
        all_named = all(v != x for v, x in zip(values, named.items, strict=True))
        if named.open == "" and tuple_.open == "(" and all_named:
            pairs = zip(values, tuple_.items, strict=True)
            return all(equal(Norm(x), Norm(y), algebra) for x, y in pairs)
    if _tuple_of_listed_values(a, g):
        # "(1000, 10)" against "10^{3}, 10": the gold lists the tuple's values in its order.
        return all(equal(Norm(x), Norm(y), algebra) for x, y in zip(a.items, g.items, strict=True))
    if (a.open, a.close) != (g.open, g.close) and not (a.unordered and g.unordered):
        # Brackets of tuples and intervals matter; a bare list against a set does not.
        return False
    if a.unordered:
        return _unordered_equal(list(a.items), list(g.items), algebra)
    return all(equal(Norm(x), Norm(y), algebra) for x, y in zip(a.items, g.items, strict=True))


def _tuple_of_listed_values(answer: Struct, gold: Struct) -> bool:
    """Whether a tuple answer is to be read against a bare-list gold item by item, in order.

    Not when the tuple may be an open interval (two numbers, the first smaller): ``(1, 2)``
    against the gold ``1, 2`` stays a mismatch."""
    if gold.open != "" or (answer.open, answer.close) != ("(", ")"):
        return False
    if len(answer.items) == 2:
        low, high = (to_fraction(x) for x in answer.items)
        if low is not None and high is not None and low < high:
            return False
    return True


def _unordered_equal(a: list[str], g: list[str], algebra: Algebra) -> bool:
    if len(a) != len(g):
        return False
    if sorted(a) == sorted(g):
        return True
    # All plain numbers (the usual case): compare the sorted values, no pairwise search.
    fa = [f for f in map(to_fraction, a) if f is not None]
    fg = [f for f in map(to_fraction, g) if f is not None]
    if len(fa) == len(a) and len(fg) == len(g):
        return sorted(fa) == sorted(fg)
    unmatched = [Norm(y) for y in g]
    for x in a:
        item = Norm(x)
        for i, y in enumerate(unmatched):
            if equal(item, y, algebra):
                del unmatched[i]
                break
        else:
            return False
    return True
