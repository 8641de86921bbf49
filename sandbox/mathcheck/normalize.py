"""Pure-string normalisation of answers and the cheap comparisons that need no algebra.

Everything here is fast and bounded (no sympy): exact text after normalisation, exact
rational arithmetic on plain numbers, and splitting of tuples / intervals / sets so their
elements can be compared one by one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

_SPACING = re.compile(
    r"\\(?:!|,|;|:|quad|qquad|displaystyle|textstyle|left|right|big|Big)(?![a-zA-Z])|~"
)
_TEXT = re.compile(r"\\(?:text|textbf|textit|mbox|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_UNIT_TAIL = re.compile(
    r"^(.*?\d)\s*(?:[a-zA-Z]{2,}\.?)(?:\s*(?:\^\s*\{?\d\}?|[a-zA-Z]{2,}\.?|/\s*[a-zA-Z]+))*\s*$"
)
_ASSIGN = re.compile(r"^[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?\s*=\s*([^=<>]+)$")
_FRAC = re.compile(r"^(-?)\\frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(-?\d+)\s*\}$")
_FRAC_SHORT = re.compile(r"^(-?)\\frac(\d)(\d)$")
_HEDGE = re.compile(r"(?:\bor\b|\\lor|\\vee|\beither\b)")
OPENERS = {"(": ")", "[": "]", "\\{": "\\}", "\\langle": "\\rangle"}


@dataclass(frozen=True)
class Norm:
    text: str
    percent: bool = False


def normalize(raw: str) -> Norm:
    s = raw.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\dbinom", "\\binom")
    s = _SPACING.sub("", s)
    s = _DEGREES.sub("", s)
    for _ in range(3):
        s = _TEXT.sub(lambda m: " " + m.group(1).strip() + " ", s)
    s = s.replace("\\ ", " ").replace("\\cdot", "*").replace("\\times", "*")
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    percent = False
    if s.endswith("\\%") or s.endswith("%"):
        percent = True
        s = s[: -2 if s.endswith("\\%") else -1].strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    m = _UNIT_TAIL.match(s)
    if m and to_fraction(m.group(1).strip()) is not None:
        s = m.group(1).strip()
    return Norm(text=s.replace(" ", ""), percent=percent)


def strip_assignment(text: str) -> str:
    """``x=3`` -> ``3`` (a single variable named on the left)."""
    m = _ASSIGN.match(text)
    return m.group(1).strip() if m else text


def is_hedge(text: str) -> bool:
    return bool(_HEDGE.search(text))


def to_fraction(text: str) -> Fraction | None:
    """Exact value of a plain number: integer, decimal, scientific, a/b, \\frac{a}{b}."""
    t = text.replace(" ", "")
    if not t or len(t) > 64:
        return None
    m = _FRAC.match(t) or _FRAC_SHORT.match(t)
    if m:
        sign, num, den = m.groups()
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return -value if sign else value
    if t.count("/") == 1:
        num, den = t.split("/")
        a, b = to_fraction(num), to_fraction(den)
        if a is None or b is None or b == 0:
            return None
        return a / b
    if re.fullmatch(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d{1,3})?", t):
        return Fraction(t)
    return None


def decimals_of(text: str) -> int:
    t = text.replace(" ", "")
    if re.fullmatch(r"[-+]?\d*\.\d+", t):
        return len(t.split(".")[1])
    return 0


def numbers_equal(answer: Norm, gold: Norm, a: Fraction, g: Fraction) -> bool:
    """Exact equality; a percentage matches p or p/100; an answer given with >= 3 decimals
    matches a gold that rounds to it (1/3 ~ 0.333)."""
    candidates = [a]
    if answer.percent and not gold.percent:
        candidates.append(a / 100)
    if gold.percent and not answer.percent:
        candidates.append(a * 100)
    for c in candidates:
        if c == g:
            return True
    d = decimals_of(answer.text)
    return d >= 3 and g.denominator != 1 and round(g, d) == a


@dataclass(frozen=True)
class Struct:
    open: str
    close: str
    items: tuple[str, ...]

    @property
    def unordered(self) -> bool:
        return self.open == "\\{" or self.open == ""


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets."""
    parts: list[str] = []
    cur: list[str] = []
    depth, i = 0, 0
    while i < len(text):
        ch = text[i]
        if text.startswith("\\{", i) or text.startswith("\\langle", i):
            depth += 1
        elif text.startswith("\\}", i) or text.startswith("\\rangle", i):
            depth -= 1
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if depth == 0 and text.startswith(sep, i):
            parts.append("".join(cur))
            cur = []
            i += len(sep)
            continue
        cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def parse_struct(text: str) -> Struct | None:
    """Tuples ``(1,2)``, intervals ``[1,2)``, sets ``\\{1,2\\}`` and bare lists ``1,2``."""
    for opener in OPENERS:
        if text.startswith(opener):
            for end in (")", "]", "\\}", "\\rangle"):
                if text.endswith(end) and len(text) > len(opener) + len(end):
                    inner = text[len(opener) : len(text) - len(end)]
                    items = split_top(inner)
                    several = len(items) > 1 or opener == "\\{"
                    if len(split_top(text)) == 1 and several and _balanced(inner):
                        return Struct(opener, end, tuple(items))
    items = split_top(text)
    if len(items) > 1:
        return Struct("", "", tuple(items))
    return None


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth < 0:
            return False
    return depth == 0
