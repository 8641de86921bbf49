"""A small exact parser for the LaTeX most answers use; runs inside the workers.

latex2sympy (an ANTLR grammar) takes 5-20 ms per answer; this recursive-descent parser takes
a fraction of a millisecond for numbers, letters, ``+ - * / ^``, brackets, ``\\frac``,
``\\sqrt`` and ``\\pi``. Anything else (a command it does not know, subscripts, ``!``,
``|``, commas, relations, a division followed by an implicit product whose reading differs
between conventions) raises ``Unsupported`` and the caller falls back to latex2sympy, so
this parser never has to guess. Decimals become exact rationals.
"""

from __future__ import annotations

import re
from typing import Any

_TOKEN = re.compile(r"\s*(\\[a-zA-Z]+|\d+\.\d+|\d+|\.\d+|[a-zA-Z]|[-+*/^(){}\[\]])")
_STARTS_FACTOR = re.compile(r"\d|\.|[a-zA-Z]|[({]|\\(?:frac|sqrt|pi)$")


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
    return out


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
        return self.sympy.E if token == "e" else self.sympy.Symbol(token)

    def atom(self) -> Any:
        sympy = self.sympy
        token = self.take()
        if token[0].isdigit() or token[0] == ".":
            if len(token) > 1 and token[0] == "0" and token[1].isdigit():
                raise Unsupported("leading zero")
            return sympy.Rational(token) if "." in token else sympy.Integer(token)
        if len(token) == 1 and token.isalpha():
            return self.letter(token)
        if token == "(":
            value = self.expr()
            self.take(")")
            return value
        if token == "{":
            value = self.expr()
            self.take("}")
            return value
        if token == "\\pi":
            return sympy.pi
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


def parse_simple(text: str) -> Any:
    """A sympy expression for text in the subset; raises ``Unsupported`` otherwise."""
    if _WORD.search(text):
        raise Unsupported("a word: sqrt(8) is not s*q*r*t*8")
    if _MIXED_NUMBER.search(text):
        raise Unsupported("2\\frac{1}{4} may be a mixed number")
    return _Parser(text).parse()
