"""Reject answers that would make algebra explode, before any algebra runs.

Power towers, huge exponents or factorials, deep nesting and absurd lengths return at once
as "rejected" instead of tying up a worker until its timeout.
"""

from __future__ import annotations

import re

MAX_LENGTH = 400
MAX_DEPTH = 24
MAX_EXPONENT_DIGITS = 4
MAX_FACTORIAL = 500

_EXPONENT = re.compile(r"\^\s*\{?\s*(-?[\d.]+)")
# An exponent that itself holds an exponent: a^{b^c}, a^b^c, a**b**c.
_TOWER = re.compile(r"\^\s*\{[^{}]*\^|\^\s*[\w.]+\s*\^|\*\*\s*[\w.]+\s*\*\*")
_FACTORIAL = re.compile(r"(\d+)\s*!|\\factorial\s*\{?\s*(\d+)")
_BIG_NUMBER = re.compile(r"\d{200,}")


def depth(text: str) -> int:
    d = best = 0
    for ch in text:
        if ch in "([{":
            d += 1
            best = max(best, d)
        elif ch in ")]}":
            d -= 1
    return best


def pathological(text: str) -> str | None:
    """Why this answer is refused, or None when it is safe to parse."""
    if len(text) > MAX_LENGTH:
        return f"longer than {MAX_LENGTH} characters"
    if depth(text) > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH}"
    if _TOWER.search(text):
        return "power tower"
    for m in _EXPONENT.finditer(text):
        if len(m.group(1).lstrip("-").split(".")[0]) > MAX_EXPONENT_DIGITS:
            return "huge exponent"
    for m in _FACTORIAL.finditer(text):
        n = int(m.group(1) or m.group(2))
        if n > MAX_FACTORIAL:
            return "huge factorial"
    if _BIG_NUMBER.search(text):
        return "huge number"
    return None
