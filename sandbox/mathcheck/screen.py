"""Reject answers that would make algebra explode, before any algebra runs.

Power towers, huge exponents or factorials, deep nesting and absurd lengths return at once
as "rejected" instead of tying up a worker until its timeout. The screen is deliberately
coarse: anything it lets through is still bounded by the worker's deadline, so it only has
to catch what is common and cheap to recognise.
"""

from __future__ import annotations

import re

MAX_LENGTH = 1000
MAX_DEPTH = 24
MAX_EXPONENT_DIGITS = 4
MAX_FACTORIAL = 3000
MAX_DIGITS = 200

_EXPONENT = re.compile(r"(?:\^|\*\*)\s*\{?\s*\(?\s*-?\s*(\d[\d.]*)")
# An exponent that itself holds an exponent: a^{b^c}, a^b^c, a**b**c, \exp(\exp(x)).
_TOWER = re.compile(
    r"\^\s*\{[^{}]*\^|\^\s*(?:\d+|[a-zA-Z])\s*\^|\*\*\s*[\w.(]+\s*\*\*|\\exp\s*[({]\s*\\exp|\^\s*\{\s*\\exp"
)
_FACTORIAL = re.compile(r"(\d+)\s*!|\\factorial\s*\{?\s*(\d+)")
_GAMMA = re.compile(r"\\Gamma|\\operatorname\{Gamma\}")
_BIG_OR_POWER = re.compile(r"\^|\*\*|\d{5}")
_BINOM = re.compile(r"\\binom\s*\{\s*(\d+)")
_BIG_LIMIT = re.compile(r"\\(?:sum|prod)\w*\s*_.*?\^\s*\{?\s*(\d+|\w+\^)")
_BIG_NUMBER = re.compile(r"\d{" + str(MAX_DIGITS) + ",}")


def depth(text: str) -> int:
    d = best = 0
    for ch in text:
        if ch in "([{":
            d += 1
            best = max(best, d)
        elif ch in ")]}":
            d -= 1
    return best


def _argument_before(text: str, close: int) -> str:
    """The bracketed text that ends at index ``close`` (a closing bracket)."""
    d = 0
    for i in range(close, -1, -1):
        d += text[i] in ")]}"
        d -= text[i] in "([{"
        if d == 0:
            return text[i + 1 : close]
    return text[:close]


def _huge_growth(text: str) -> bool:
    """A factorial or gamma of a power or a long number: (10^{10})!, \\Gamma(10^{7}).

    (2n)! and \\Gamma(5) are fine; a factorial of a plain number is checked separately."""
    for i, ch in enumerate(text):
        after_bracket = ch == "!" and i > 0 and text[i - 1] in ")}"
        if after_bracket and _BIG_OR_POWER.search(_argument_before(text, i - 1)):
            return True
    return any(_BIG_OR_POWER.search(text[m.end() : m.end() + 40]) for m in _GAMMA.finditer(text))


def pathological(text: str) -> str | None:
    """Why this answer is refused, or None when it is safe to hand to sympy."""
    if len(text) > MAX_LENGTH:
        return f"longer than {MAX_LENGTH} characters"
    if depth(text) > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH}"
    if _TOWER.search(text):
        return "power tower"
    for m in _EXPONENT.finditer(text):
        if len(m.group(1).split(".")[0]) > MAX_EXPONENT_DIGITS:
            return "huge exponent"
    for m in _FACTORIAL.finditer(text):
        if int(m.group(1) or m.group(2)) > MAX_FACTORIAL:
            return "huge factorial"
    if _huge_growth(text):
        return "factorial or gamma of a huge value"
    for m in _BINOM.finditer(text):
        if len(m.group(1)) > 4:
            return "huge binomial"
    for m in _BIG_LIMIT.finditer(text):
        limit = m.group(1)
        if not limit.isdigit() or len(limit) > 4:
            return "huge sum or product"
    if _BIG_NUMBER.search(text):
        return "huge number"
    return None
