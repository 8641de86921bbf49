"""A small exact parser for the LaTeX most answers use; runs inside the workers.

latex2sympy (an ANTLR grammar) takes 5-50 ms per answer; this recursive-descent parser takes
a fraction of a millisecond for numbers, letters, Greek letters, subscripts (``x_1``,
``\\omega_{n}``), ``+ - * / ^``, brackets, ``\\frac``, ``\\sqrt``, ``\\pi``,
``\\infty`` and the functions ``\\sin \\cos \\tan \\exp \\ln \\log``. It builds
exactly the expression latex2sympy builds for the same text (the same symbol names, its
unevaluated ``log(x, E)`` for ``\\ln x``; ``tests/test_math_rules.py`` compares the two on
every form it reads), so an answer read here and a gold read there still compare as they
would. Anything else (a command it does not know, ``!``, ``|``, commas, relations, a
division followed by an implicit product whose reading differs between conventions, a
function's argument it cannot delimit as latex2sympy does) raises ``Unsupported`` and the
caller falls back to latex2sympy, so this parser never has to guess. Decimals become exact
rationals.
"""

from __future__ import annotations

import re
from typing import Any

_TOKEN = re.compile(r"\s*(\\[a-zA-Z]+|\d+\.\d+|\d+|\.\d+|[a-zA-Z]|[-+*/^(){}\[\]_])")
_STARTS_FACTOR = re.compile(r"\d|\.|[a-zA-Z]|[({\[]|\\[a-zA-Z]+$")

GREEK = frozenset(
    {
        "alpha",
        "beta",
        "delta",
        "epsilon",
        "varepsilon",
        "zeta",
        "eta",
        "theta",
        "vartheta",
        "iota",
        "kappa",
        "lambda",
        "mu",
        "nu",
        "xi",
        "rho",
        "varrho",
        "sigma",
        "tau",
        "upsilon",
        "phi",
        "varphi",
        "chi",
        "psi",
        "omega",
        "Delta",
        "Theta",
        "Lambda",
        "Xi",
        "Pi",
        "Sigma",
        "Upsilon",
        "Phi",
        "Psi",
        "Omega",
    }
)
"""Greek letters latex2sympy reads as the symbol of their name (not ``\\gamma``: to it
that is Euler's constant)."""
_FUNCTIONS = ("\\sin", "\\cos", "\\tan", "\\exp", "\\ln", "\\log")
_BRACKETS = {"(": ")", "[": "]"}


_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")
_MIXED_NUMBER = re.compile(r"\d\s*\\frac")


class Unsupported(Exception):
    """Outside the subset: use the full LaTeX parser."""


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            if text[pos:].strip() == "":
                break
            raise Unsupported(text[pos : pos + 10])
        out.append(m.group(1))
        pos = m.end()
    # \left( x \right): the sizing commands before a bracket change nothing.
    kept = []
    for i, token in enumerate(out):
        if token in ("\\left", "\\right"):
            if i + 1 == len(out) or out[i + 1] not in "()[]":
                raise Unsupported(token)
            continue
        kept.append(token)
    return kept


class _Parser:
    def __init__(self, text: str) -> None:
        import sympy

        self.sympy = sympy
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise Unsupported(f"expected {expected!r}, got {token!r}")
        self.pos += 1
        return token

    def parse(self) -> Any:
        if not self.tokens:
            raise Unsupported("empty")
        value = self.expr()
        if self.peek() is not None:
            raise Unsupported(f"trailing {self.peek()!r}")
        return value

    def expr(self) -> Any:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            right = self.term()
            value = value + right if op == "+" else value - right
        return value

    def term(self) -> Any:
        value = self.unary()
        divided = False
        while True:
            token = self.peek()
            if token in ("\\cdot", "\\times"):
                token = "*"
            if token in ("*", "/"):
                self.take()
                right = self.unary()
                if token == "/":
                    value, divided = value / right, True
                else:
                    value = value * right
            elif token is not None and _STARTS_FACTOR.match(token):
                if divided:
                    raise Unsupported("implicit product after a division")  # 1/2x: ambiguous
                value = value * self.power()
            else:
                return value

    def unary(self) -> Any:
        if self.peek() == "-":
            self.take()
            return -self.unary()
        if self.peek() == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self) -> Any:
        base = self.atom()
        if self.peek() == "^":
            self.take()
            exponent = self.group() if self.peek() == "{" else self.single()
            if self.peek() == "^":
                raise Unsupported("power tower")
            return self.sympy.Pow(base, exponent)
        return base

    def single(self) -> Any:
        """One token as an exponent or an unbraced argument: x^2, x^n, \\sqrt2."""
        token = self.take()
        if token.isdigit():
            if len(token) > 1:
                raise Unsupported("x^23 is x^2 times 3 in TeX")
            return self.sympy.Integer(token)
        if len(token) == 1 and token.isalpha():
            return self.letter(token)
        if token == "\\pi":
            return self.sympy.pi
        raise Unsupported(f"exponent {token!r}")

    def group(self) -> Any:
        self.take("{")
        value = self.expr()
        self.take("}")
        return value

    def letter(self, token: str) -> Any:
        """A letter or a Greek letter's name, with its subscript if it has one."""
        if self.peek() == "_":
            if token == "e":
                raise Unsupported("e_1")  # (latex2sympy refuses it)
            self.take()
            return self.sympy.Symbol(f"{token}_{self.subscript()}")
        return self.sympy.E if token == "e" else self.sympy.Symbol(token)

    def subscript(self) -> str:
        """x_1, x_{1} -> "1"; x_{12} -> "{12}" (latex2sympy's names); x_n -> "n"."""
        token = self.take()
        if token == "{":
            token = self.take()
            self.take("}")
            if len(token) > 1 and token.isdigit():
                return "{" + token + "}"
        if len(token) == 1 and token.isalnum():
            return token
        raise Unsupported(f"subscript {token!r}")

    def function(self, name: str) -> Any:
        """\\sin x, \\cos(2t), \\sin^2 x, \\log_2 8, \\exp{t}."""
        sympy = self.sympy
        base: Any = sympy.E if name == "\\ln" else sympy.Integer(10)
        if name == "\\log" and self.peek() == "_":
            self.take()
            digits = self.subscript().strip("{}")
            if not digits.isdigit():
                raise Unsupported("a log's base")
            base = sympy.Integer(digits)
        power = None
        if self.peek() == "^":
            self.take()
            power = self.group() if self.peek() == "{" else self.single()
            if not (power.is_Integer and power > 0):
                raise Unsupported("sin^{-1}: a function's power other than 1, 2, 3, ...")
        if self.peek() in ("(", "{"):
            closing = ")" if self.take() == "(" else "}"
            argument = self.expr()
            self.take(closing)
            if closing == "}" and self.peek() == "^":
                raise Unsupported("\\sin{x}^2")  # (latex2sympy: sin(x^2))
        else:
            argument = self.bare_argument()
        if name in ("\\ln", "\\log"):
            value = sympy.log(argument, base, evaluate=False)  # (as latex2sympy leaves it)
        else:
            value = getattr(sympy, name[1:])(argument)
        if power is not None:
            if self.peek() == "^":
                raise Unsupported("a function's power twice")
            value = sympy.Pow(value, power)
        return value

    def bare_argument(self) -> Any:
        """\\sin 2x, \\cos\\omega t, \\sin x^2: the product of the letters and numbers
        that follow, which latex2sympy takes as the argument; unless something else comes
        before a ``+``, ``-`` or closing bracket (then the argument's end is its guess)."""
        value = self.power()
        while (token := self.peek()) is not None and _simple_factor(token):
            value = value * self.power()
        if token is not None and token not in ("+", "-", ")", "}", "]") and token not in _FUNCTIONS:
            raise Unsupported(f"where the argument of a function ends ({token!r})")
        return value

    def atom(self) -> Any:
        sympy = self.sympy
        token = self.take()
        if token[0].isdigit() or token[0] == ".":
            if len(token) > 1 and token[0] == "0" and token[1].isdigit():
                raise Unsupported("leading zero")
            return sympy.Rational(token) if "." in token else sympy.Integer(token)
        if token == "I":
            raise Unsupported("I")  # (latex2sympy: the imaginary unit, but i a symbol)
        if len(token) == 1 and token.isalpha():
            return self.letter(token)
        if token[1:] in GREEK and token[0] == "\\":
            return self.letter(token[1:])
        if token in _FUNCTIONS:
            return self.function(token)
        if token in _BRACKETS:
            value = self.expr()
            self.take(_BRACKETS[token])
            return value
        if token == "{":
            value = self.expr()
            self.take("}")
            return value
        if token == "\\pi":
            return sympy.pi
        if token == "\\infty":
            if self.peek() == "^":
                raise Unsupported("a power of infinity")
            return sympy.oo
        if token == "\\frac":
            numerator = self.group()
            denominator = self.group()
            return numerator / denominator
        if token == "\\sqrt":
            if self.peek() == "[":
                self.take("[")
                index = self.expr()
                self.take("]")
                return sympy.root(self.group(), index)
            return sympy.sqrt(self.group())
        raise Unsupported(token)


def _simple_factor(token: str) -> bool:
    """A number, a letter or a Greek letter (``\\pi`` included)."""
    return (
        token[0].isdigit()
        or (len(token) == 1 and token.isalpha())
        or (token[0] == "\\" and (token[1:] in GREEK or token == "\\pi"))
    )


def parse_simple(text: str) -> Any:
    """A sympy expression for text in the subset; raises ``Unsupported`` otherwise."""
    if _WORD.search(text):
        raise Unsupported("a word: sqrt(8) is not s*q*r*t*8")
    if _MIXED_NUMBER.search(text):
        raise Unsupported("2\\frac{1}{4} may be a mixed number")
    return _Parser(text).parse()
