"""Pure-string normalisation of answers and the exact number arithmetic that needs no algebra.

Everything here is fast and bounded (regexes and ``fractions``, no sympy), so it runs in the
caller's process: most answers are settled here without a round trip to a worker.

Percentages: ``p\\%`` equals ``p\\%``, the number ``p`` and the fraction ``p/100``; so ``50\\%``,
``50`` and ``0.5`` all match a gold of ``50\\%`` (and a gold of ``0.5`` or ``50`` accepts
``50\\%``). Models write the percent sign, drop it, or convert, and all three mean the same
answer; what is never accepted is a number that is neither p nor p/100.

Approximations: a value with no finite decimal expansion (1/3, sqrt 2, pi) matches a plain
decimal with at least ``MIN_APPROX_DECIMALS`` decimals that is correct to its last decimal
(0.333333 for 1/3, 1.414214 for sqrt 2), the precision math-verify also accepts; fewer
decimals (0.333, 3.14) are a different answer. A value whose expansion ends must be exact.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from fractions import Fraction

MIN_APPROX_DECIMALS = 6
"""Decimals an approximation of a non-terminating value needs to count as that value."""

# Unicode that models write for LaTeX commands.
_UNICODE = str.maketrans(
    {
        "\u03c0": "\\pi ",  # pi
        "\u221e": "\\infty ",  # infinity
        "\u2212": "-",  # minus sign
        "\u00d7": "*",  # multiplication sign
        "\u00b7": "*",  # middle dot
        "\u2264": "\\leq ",
        "\u2265": "\\geq ",
    }
)
_THIN_COMMA = re.compile(r"(?<=\d),\\!\s*(?=\d)")
_ESCAPED_SPACE = re.compile(r"(?<!\\)\\ ")  # "\ " is a space; "\\ " is a new row
# \frac12 and \sqrt3: TeX takes a single token as the argument; give it its braces.
_SHORT_ARGUMENT = re.compile(r"(\\frac(?:\{[^{}]*\})?|\\sqrt)\s*(\d|\\pi\b|[a-zA-Z](?![a-zA-Z]))")
# Set-builder notation over one real variable: \{x | cond\}, \{x \mid cond\}, \{x : cond\},
# \{x \in \mathbb{R} | cond\}.
_SET_BUILDER = re.compile(
    r"^\\\{\s*([a-zA-Z])\s*(?:\\in\s*\\mathbb\s*\{?R\}?\s*)?(?:\||\\mid|:)\s*(.+?)\s*\\\}$"
)
_MEMBERSHIP = re.compile(r"^[a-zA-Z]\s*\\in\s*")
_SPACING = re.compile(
    r"\\(?:!|,|;|:|quad|qquad|displaystyle|textstyle|left|right|bigl|bigr|Bigl|Bigr|big|Big)"
    r"(?![a-zA-Z])|~"
)
# Commands whose argument is text or a font change: \text{ cm}, \textnormal{ cm}, \mathrm{e}.
_TEXT_COMMANDS = (
    r"(?:text|textnormal|textbf|textit|textrm|textsf|texttt|textup|mbox|mathrm|mathbf|mathit"
    r"|mathsf|mathtt|mathnormal|operatorname)"
)
_TEXT = re.compile(r"\\" + _TEXT_COMMANDS + r"\s*\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree")
_DOLLARS = re.compile(r"^\\\$\s*|^\$(?=\d)")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:(?:,|\{,\})\d{3})+(?:\.\d+)?$")
# A number followed by words (units): "5 cm", "12 meters", "3 km/h", "4 cm^2".
# Each unit word is a whole run of letters followed by a space, "/", "^" or the end, so the
# match is linear (no way to split "meters" into "met" + "ers" and backtrack).
# Words that are mathematics, not units: "2 pi" is not 2, "2 and 3" is not 2.
_MATH_WORDS = (
    "pi|sqrt|ln|log|sin|cos|tan|cot|sec|csc|exp|inf|infty|and|or|times|plus|minus|over"
    "|am|pm|AM|PM"  # 7:00 PM: part of a time of day
)
_NOT_UNIT = r"(?!(?:" + _MATH_WORDS + r")\b)"
_UNIT_WORD = _NOT_UNIT + r"[a-zA-Z]{2,}\.?"
_UNIT_TAIL = re.compile(
    r"^([-+]?[\d.,/]*\d)\s*"
    + _UNIT_WORD
    + r"(?:\s+"
    + _UNIT_WORD
    + r"|\s*/\s*[a-zA-Z]+|\s*\^\s*\{?\d\}?)*\s*$"
)
# A number followed by \text{...}: the text is a unit, even a one-letter one (5 \text{m}).
_PERCENT_WORD = re.compile(r"\s*(?:\\text\s*\{\s*percent\s*\}|\bpercent)\s*$")
# Not a one-letter unit: \mathrm{e} is Euler's number and \mathrm{i} the imaginary unit;
# not a unit either: the am/pm of a time of day (5\text{ am}).
_TEXT_UNIT = re.compile(
    r"^([-+]?[\d.,/]*\d)\s*\\"
    + _TEXT_COMMANDS
    + r"\s*\{\s*(?![ei]\s*\})(?![aApP]\.?[mM]\.?\s*\})[a-zA-Z][^{}]*\}(?:\s*\^\s*\{?\d\}?)?$"
)
# Words in \text after any expression are a unit too (2\pi \text{ cm}): whole words of two
# letters or more that are not words of mathematics ("or", "and").
_TRAILING_TEXT_UNIT = re.compile(
    r"(?<=[\w})])\s*\\"
    + _TEXT_COMMANDS
    + r"\s*\{\s*"
    + _UNIT_WORD
    + r"(?:\s+"
    + _UNIT_WORD
    + r")*\s*\}(?:\s*\^\s*\{?\d\}?)?$"
)
# A name: a letter or a Greek letter, with a subscript, primes and arguments (x, x_1, f(x),
# \theta). A single letter may also be a variable of an equation (y = 2x + 1).
_LETTER = (
    r"(?:[a-zA-Z]|\\(?:alpha|beta|gamma|delta|epsilon|varepsilon|theta|lambda|mu|phi|varphi"
    r"|psi|omega|sigma|tau|rho))"
)
_NAME = _LETTER + r"(?:_\{?[a-zA-Z0-9]+\}?)?'*(?:\([a-z](?:,[a-z])*\))?"
# Names that no equation uses as a variable: a segment or angle of a figure (BC, \angle ABC,
# m\angle A, \overline{AB}), a tuple of names ((x,y)), a ratio of names (a:b).
_FIGURE = r"(?:m?\\angle ?[A-Z]{1,3}|\\overline\{[A-Z]{2,3}\}|[A-Z]{2,3})"
_NAMES = rf"(?:{_FIGURE}|\({_NAME}(?:,{_NAME})+\)|{_NAME}(?::{_NAME})+)"
_ASSIGN = re.compile(rf"^({_NAME}|{_NAMES})\s*=\s*([^=<>]+)$")
_MANY_NAMES = re.compile(rf"^{_NAMES}$")
_FRAC = re.compile(r"^([-+]?)\\frac\s*\{\s*([-+]?\d+)\s*\}\s*\{\s*([-+]?\d+)\s*\}$")
_MIXED = re.compile(r"^([-+]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}$")
_FRAC_SHORT = re.compile(r"^([-+]?)\\frac(\d)(\d)$")
_DECIMAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d{1,3})?")
_HEDGE = re.compile(r"\bor\b|\\lor\b|\\vee\b|\beither\b", re.IGNORECASE)
_EITHER = re.compile(r"\\text\{\s*either\s*\}|\beither\b", re.IGNORECASE)
_ALTERNATIVE = re.compile(
    r"\s*,?\s*(?:\\text\{\s*(?:or|and)\s*\}|\bor\b|\band\b|\\lor\b|\\vee\b)\s*",
    re.IGNORECASE,
)
_OR = re.compile(r"\s*,?\s*(?:\\text\{\s*or\s*\}|\bor\b|\\lor\b|\\vee\b)\s*", re.IGNORECASE)
_RELATION = re.compile(r"[<>\u2264\u2265]|\\[lg]eq?(?![a-zA-Z])|\\[lg]eqslant|\\[lg]t(?![a-zA-Z])")
_EQUALS = re.compile(r"(?<![<>!])=")  # an equation, not the = of <= or >=
_AND = re.compile(r"\\text\{\s*and\s*\}|\band\b", re.IGNORECASE)
_SPACES = re.compile(r"(\\[a-zA-Z]+|(?<=\d))\s+(?=[a-zA-Z\d])|\s+")
_LETTER_CHOICE = re.compile(r"^\(([A-Ea-e])\)$|^([A-E])$")
_MID = re.compile(r"\\mid(?![a-zA-Z])")
# A choice letter followed by the choice's content: "(D) $4(x+1)=4x$", "C. x = 42".
_CHOICE_WITH_CONTENT = re.compile(r"^\(([A-Z])\)\s*(\S.*)$|^([A-Z])[.:)]\s+(\S.*)$", re.DOTALL)
_OTHER_CHOICE = re.compile(r"\([A-Z]\)|(?:^|\s)[A-Z][.:)](?:\s|$)")


@dataclass(frozen=True)
class Norm:
    """An answer after normalisation: LaTeX without spacing, units, ``$`` or ``%``."""

    text: str
    percent: bool = False


def normalize(raw: str) -> Norm:
    """The normalised answer; short texts (most answers, and a gold checked against every
    sample of its prompt) are remembered."""
    if len(raw) <= _CACHED_LENGTH:
        return _normalize_cached(raw)
    return _normalize(raw)


_CACHED_LENGTH = 256
"""Texts up to this long are cached by ``normalize`` (bounds the cache's memory)."""


@functools.lru_cache(maxsize=16384)
def _normalize_cached(raw: str) -> Norm:
    return _normalize(raw)


def _normalize(raw: str) -> Norm:
    s = raw.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left) : len(s) - len(right)].strip()
    s = s.translate(_UNICODE)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\dbinom", "\\binom")
    s = _THIN_COMMA.sub(",", s)  # 11,\! 111: a thousands separator with a negative space
    s = _SPACING.sub("", s)
    s = _DEGREES.sub("", s)
    s = _PERCENT_WORD.sub("%", s)
    unit = _TEXT_UNIT.match(s)
    if unit and to_fraction(unit.group(1).replace(",", "")) is not None:
        s = unit.group(1)
    else:
        unit = _TRAILING_TEXT_UNIT.search(s)
        if unit and _constant(s[: unit.start()]):
            s = s[: unit.start()]
    for _ in range(3):  # \text{\textbf{...}}: a few levels, no more (bounded work)
        s = _TEXT.sub(lambda m: " " + m.group(1).strip() + " ", s)
    s = _ESCAPED_SPACE.sub(" ", s).replace("\\cdot", "*").replace("\\times", "*")
    s = s.replace("\\varnothing", "\\emptyset").replace("\\{\\}", "\\emptyset")
    for _ in range(2):  # twice: \frac12 -> \frac{1}2 -> \frac{1}{2}
        s = _SHORT_ARGUMENT.sub(lambda m: m.group(1) + "{" + m.group(2) + "}", s)
    s = s.replace("\\lbrace", "\\{").replace("\\rbrace", "\\}")
    s = _MID.sub("|", s)  # \{x \mid x = 3k\}: \mid is the bar with its spacing
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    s = s.rstrip("\\").strip()  # "185\": a backslash that ends the text begins no command
    s = _DOLLARS.sub("", s)
    percent = False
    if s.endswith("\\%") or s.endswith("%"):
        percent = True
        s = s[: -2 if s.endswith("\\%") else -1].strip()
    if _THOUSANDS.match(s):
        s = s.replace("{,}", "").replace(",", "")
    m = _UNIT_TAIL.match(s)
    if m and to_fraction(m.group(1).strip()) is not None:
        s = m.group(1).strip()
    s = _MEMBERSHIP.sub("", s)  # "x \in [1,2]": the set is the answer
    builder = _SET_BUILDER.match(s)
    if builder and _one_condition(builder.group(1), builder.group(2)):
        s = builder.group(2)  # \{x | -2 \le x < 1\}: the set its inequality describes
    choice = _LETTER_CHOICE.match(s)
    if choice:  # multiple choice: "(B)" and "B" are the same answer
        s = (choice.group(1) or choice.group(2)).upper()
    # Spaces go, except the one that ends a command before a letter ("\pi r", "\sin x")
    # and the one between two digits ("\log_2 8" is not "\log_28").
    s = _SPACES.sub(_keep_needed_space, s)
    return Norm(text=s, percent=percent)


def _one_condition(variable: str, condition: str) -> bool:
    """Whether a set-builder's condition is one inequality on its variable (not the inside
    of two sets, as in \\{x|x>3\\}\\cup\\{x|x<1\\})."""
    if "\\{" in condition or "\\}" in condition:
        return False
    return variable in condition and bool(_RELATION.search(condition))


def _constant(text: str) -> bool:
    """Whether an expression has a digit and no variable (2\\pi, 4\\sqrt{2}): words after
    it are a unit. After a variable they may be its condition (n \\text{ odd})."""
    return any(ch.isdigit() for ch in text) and not re.search(
        r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", text)
    )


def _keep_needed_space(m: re.Match[str]) -> str:
    if m.group(1) is None:
        return ""
    if m.group(1) == "":  # after a digit: needed only before another digit
        return " " if m.string[m.end() : m.end() + 1].isdigit() else ""
    return m.group(1) + " "


@dataclass(frozen=True)
class Named:
    """``name = value``: an answer or gold that names what it gives."""

    name: str
    value: str
    variable: bool
    """Whether the name may be a variable of an equation (one letter: ``y = 2x + 1``)."""


def named_value(text: str) -> Named | None:
    """``x=3``, ``BC=7``, ``(x,y)=(1,5)``, ``a:b=2:9`` as name and value; None otherwise."""
    m = _ASSIGN.match(text)
    if m is None:
        return None
    name = m.group(1)
    return Named(name=name, value=m.group(2).strip(), variable=not _MANY_NAMES.match(name))


def strip_assignment(text: str) -> str:
    """``x=3`` -> ``3``, ``f(x)=2x`` -> ``2x``: a name on the left is not the answer."""
    named = named_value(text)
    return named.value if named else text


_DECIMAL_COMMA = re.compile(r"^(-?\d+)(?:,|\{,\})(\d+)$")
_POINT_DECIMAL = re.compile(r"^[-+]?\d*\.\d+$")


def decimal_comma(gold: str) -> str | None:
    """``2,5`` -> ``2.5``: a gold of one comma that cannot separate thousands (not three
    digits after it) may be a decimal comma; None when it cannot be one. ``2,5`` may also
    be the list 2, 5: the caller uses this reading only against a decimal answer."""
    text = gold.strip().strip("$").strip()
    m = _DECIMAL_COMMA.match(text)
    if m is None or len(m.group(2)) == 3:
        return None
    return f"{m.group(1)}.{m.group(2)}"


def is_point_decimal(text: str) -> bool:
    """A plain number written with a decimal point (``2.5``, ``-0.75``)."""
    return bool(_POINT_DECIMAL.match(text))


def is_hedge(text: str) -> bool:
    """Whether the answer offers alternatives ("2 or 3", "either 2 or 3"). Inequalities
    joined by "or" ("x < 1 or x > 2") are one set, a union, not alternatives."""
    return bool(_HEDGE.search(text)) and inequality_union(text) is None


def inequality_union(text: str) -> str | None:
    """``x < 1 or x > 2`` -> ``x < 1 \\lor x > 2`` when every part joined by "or" is an
    inequality (the algebra reads it as the union of their sets); None otherwise."""
    if not _HEDGE.search(text) or _EITHER.search(text):
        return None
    parts = _OR.split(text)
    if len(parts) < 2 or not all(_RELATION.search(p) and not _EQUALS.search(p) for p in parts):
        return None
    return " \\lor ".join(p.strip() for p in parts)


def alternatives_as_list(text: str) -> str:
    """``2 or 3`` -> ``2, 3``: alternatives offered by a gold answer, as a list."""
    text = _EITHER.sub("", text)
    return _ALTERNATIVE.sub(", ", text)


def choice_letter(answer: str) -> str | None:
    """The letter of an answer that gives a choice with its content (``(D) (2,0)``,
    ``C. x = 42``); None for anything else, and for content naming another choice."""
    m = _CHOICE_WITH_CONTENT.match(answer.strip())
    if m is None:
        return None
    letter, content = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if _OTHER_CHOICE.search(content) or is_hedge(content):
        return None
    return letter


def has_and(text: str) -> bool:
    """Whether the answer joins values with "and" ("1 and 2", "1, 2, and 3")."""
    return bool(_AND.search(text))


def to_fraction(text: str) -> Fraction | None:
    """Exact value of a plain number: integer, decimal, scientific, a/b, \\frac{a}{b}."""
    t = text.replace(" ", "")
    if not t or len(t) > 64:
        return None
    m = _MIXED.match(t)
    if m:  # 2\frac{1}{4}: a mixed number, 9/4
        sign, whole, num, den = m.groups()
        if int(den) == 0:
            return None
        value = int(whole) + Fraction(int(num), int(den))
        return -value if sign == "-" else value
    m = _FRAC.match(t) or _FRAC_SHORT.match(t)
    if m:
        sign, num, den = m.groups()
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return -value if sign == "-" else value
    if t.count("/") == 1:
        num, den = t.split("/")
        a, b = to_fraction(num), to_fraction(den)
        if a is None or b is None or b == 0:
            return None
        return a / b
    if _DECIMAL.fullmatch(t):
        return Fraction(t)
    return None


def decimals(text: str) -> int:
    """Digits after the point of a plain decimal number (0 for anything else)."""
    t = text.replace(" ", "")
    if re.fullmatch(r"[-+]?\d*\.\d+", t):
        return len(t.split(".")[1])
    return 0


def _terminates(value: Fraction) -> bool:
    """Whether the decimal expansion ends (the denominator has no prime but 2 and 5)."""
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def numbers_equal(answer: Norm, gold: Norm, a: Fraction, g: Fraction) -> bool:
    """Exact equality, the percentage rule and the approximation rule of the module
    docstring."""
    candidates = [a]
    if answer.percent and not gold.percent:
        candidates.append(a / 100)
    if gold.percent and not answer.percent:
        candidates.append(a * 100)
    if any(c == g for c in candidates):
        return True
    for approx, exact, text in ((a, g, answer.text), (g, a, gold.text)):
        d = decimals(text)
        if d >= MIN_APPROX_DECIMALS and not _terminates(exact):
            return correct_to(approx, exact, d)
    return False


def correct_to(approx: Fraction, exact: Fraction, d: int) -> bool:
    """Whether ``approx`` is ``exact`` rounded or truncated to ``d`` decimals."""
    scale = 10**d
    return approx in (round(exact, d), Fraction(math.trunc(exact * scale), scale))


@dataclass(frozen=True)
class Struct:
    """A bracketed or bare list: tuple ``(1,2)``, interval ``[1,2)``, set ``\\{1,2\\}``."""

    open: str
    close: str
    items: tuple[str, ...]

    @property
    def unordered(self) -> bool:
        return self.open in ("\\{", "")


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets."""
    if sep not in text:
        return [text.strip()]  # the common case, a single value: no scan
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


_OPENERS = ("\\{", "\\langle", "(", "[")
_CLOSERS = ("\\}", "\\rangle", ")", "]")


def parse_struct(text: str) -> Struct | None:
    """Tuples, intervals, sets and bare lists; None for a single value."""
    for opener in _OPENERS:
        if not text.startswith(opener):
            continue
        for closer in _CLOSERS:
            if text.endswith(closer) and len(text) > len(opener) + len(closer):
                inner = text[len(opener) : len(text) - len(closer)]
                items = _items(inner)
                whole = len(split_top(text)) == 1
                if whole and _balanced(inner) and (len(items) > 1 or opener == "\\{"):
                    return Struct(opener, closer, tuple(items))
    items = _items(text)
    if len(items) > 1:
        return Struct("", "", tuple(items))
    return None


def _items(text: str) -> list[str]:
    """Items separated by commas, or by semicolons when there is no comma outside brackets
    ("1; 2", "(1;2)", "(1,2); (3,4)")."""
    items = split_top(text)
    return items if len(items) > 1 else split_top(text, ";")


def split_union(text: str) -> list[str] | None:
    """The parts of a union of intervals or sets, or None when there is no top-level union."""
    parts = split_top(text, "\\cup")
    return parts if len(parts) > 1 else None


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth < 0:
            return False
    return depth == 0
