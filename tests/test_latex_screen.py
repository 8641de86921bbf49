"""The algebra's LaTeX parse lexes before it parses: text latex2sympy's lexer cannot read is a
parse error without the parse. The outcome must be latex2sympy's own on every text, read or
refused: checked on the texts the checker sends to the algebra for the outside corpus (other
graders' pairs, tests/data/math_outside.md) and on unreadable text of the kind an untrained
model writes (random characters and LaTeX commands)."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import pytest
from latex2sympy2_extended import latex2sympy
from latex2sympy2_extended.latex2sympy2 import ConversionConfig

from rlfleet.sandbox.mathcheck import symbolic
from rlfleet.sandbox.mathcheck.checker import MathCheckConfig, MathChecker
from rlfleet.sandbox.mathcheck.compare import Undecided
from rlfleet.sandbox.mathcheck.corpus import load_outside

OUTSIDE = Path(__file__).parent / "data" / "math_outside.jsonl"
PIECES = [*"abxyz0123456789+-*/^_=()[]{}.,:;!?<>|'\" \n\t\\%&$#@~`", "\\frac", "\\sqrt",
          "\\text{", "\\pi", "\\cdot", "\\le", "é", "\ufffd", "\x12", "∞", "→", "≤", "й"]  # fmt: skip


def outcome(parse: Any, text: str) -> tuple[str, str]:
    try:
        return ("read", repr(parse(text)))
    except Exception as e:  # the kind of failure is the outcome: a parse error or another
        kind = "refused" if type(e) is Exception or isinstance(e, symbolic.ParseError) else "?"
        return (kind, type(e).__name__ if kind == "?" else "")


def latex2sympy_alone(text: str) -> Any:
    return latex2sympy(text, conversion_config=ConversionConfig(lowercase_symbols=False))


def algebra_texts() -> list[str]:
    """Every text the checker hands to the algebra for the outside corpus's pairs."""
    sent: list[str] = []

    def algebra(answer: str, gold: str) -> bool:
        sent.extend((answer, gold))
        raise Undecided("parse_error")

    checker = MathChecker(MathCheckConfig(processes=1))
    try:
        for pair in load_outside(OUTSIDE):
            with contextlib.suppress(Undecided):
                checker._check(pair.completion, pair.gold, algebra, prose=False)
    finally:
        checker.close()
    return sorted(set(sent))


def unreadable_texts(n: int) -> list[str]:
    rng = random.Random(7)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 40))) for _ in range(n)]


@pytest.mark.parametrize("texts", ["outside", "random"])
def test_lexing_first_changes_no_outcome(texts: str) -> None:
    corpus = algebra_texts() if texts == "outside" else unreadable_texts(600)
    assert len(corpus) > 300
    refused_by_lexer = 0
    for text in corpus:
        expected = outcome(latex2sympy_alone, text)
        assert outcome(symbolic._latex_parse, text) == expected, text
        try:
            lexed = symbolic._lexes(symbolic.normalize_latex(text, symbolic._NORMALIZATION))
        except Exception:  # (normalisation itself failing: latex2sympy's outcome, above)
            continue
        refused_by_lexer += not lexed
        if not lexed:
            assert expected[0] == "refused", text
    # The screen does refuse: most random text, some of the outside corpus's.
    assert refused_by_lexer > (len(corpus) // 2 if texts == "random" else 0), refused_by_lexer
