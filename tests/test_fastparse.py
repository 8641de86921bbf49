"""The math checker's fast LaTeX parser reads what it reads as latex2sympy does, and leaves
everything else to latex2sympy (``Unsupported``): an answer read by one and a gold read by
the other must still compare as they would if both went through latex2sympy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sympy
from latex2sympy2_extended import latex2sympy
from latex2sympy2_extended.latex2sympy2 import ConversionConfig

from rlfleet.sandbox.mathcheck import MathChecker
from rlfleet.sandbox.mathcheck.fastparse import Unsupported, parse_simple

READ = [
    # numbers, letters, the old subset
    "2",
    "0.25",
    "x^{-1}",
    "\\frac{1}{2}x",
    "\\sqrt{2}",
    "\\sqrt[3]{x}",
    "\\pi r^2",
    "e^{x}",
    "2i",
    "E",
    "(x+1)^2",
    # subscripts
    "x_1",
    "x_{1}",
    "x_{12}",
    "x_n",
    "v_{0}",
    "x_1y",
    "x_{1}y_{2}",
    "x_{n}^{2}",
    "P_0^{2/5}",
    "(x_1+x_2)^2",
    "C_{1}e^{t}",
    "m_{p}c^{2}",
    # Greek letters
    "\\omega",
    "\\omega_{n}",
    "\\omega_n",
    "\\omega_{d}^{2}",
    "\\alpha\\beta",
    "\\Omega",
    "\\Delta x",
    "\\phi\\psi",
    "\\varepsilon_0",
    "\\lambda^5",
    "\\theta_1-\\theta_2",
    "\\frac{\\omega_d}{s}",
    "\\frac{2c^2}{d^2\\lambda^5}",
    "e^{-\\zeta\\omega_{n}t}",
    "\\zeta\\omega_{n}e^{-2\\zeta\\omega_{n}t}",
    # functions
    "\\cos t",
    "\\cos(2t)",
    "\\cos 2t",
    "\\cos 2",
    "\\cos t+1",
    "\\cos{t}",
    "\\cos(t)^2",
    "\\cos^{2}(t)",
    "\\sin(x)^{2}",
    "\\sin^{2}\\theta",
    "\\sin^2 x",
    "\\sin^{3}(2x)",
    "\\sin x y",
    "\\sin 2x",
    "\\sin x^2",
    "\\sin x^2 y",
    "\\sin x - 1",
    "\\sin x \\cos x",
    "\\sin x+\\cos x",
    "\\sin(x)\\cos(x)",
    "2\\sin x\\cos x",
    "\\sin\\theta",
    "\\cos\\omega t",
    "\\cos(\\omega t)",
    "A\\cos(\\omega t+\\phi)",
    "\\sin(\\pi)",
    "\\sin \\frac{x}{2}",
    "\\frac{\\sin x}{x}",
    "\\sqrt{\\sin x}",
    "\\cos(x)/2",
    "\\tan x",
    "\\exp(x)",
    "\\exp{a*t}",
    "\\exp(0)",
    "\\exp x",
    "\\ln x",
    "\\ln(x)",
    "\\ln 2",
    "\\ln(2)+1",
    "\\ln x^2",
    "\\log x",
    "\\log(100)",
    "\\log_2 x",
    "\\log_{2} 8",
    "\\log_{10} x",
    "\\sqrt{2}\\cos(2t-\\frac{\\pi}{4})",
    "\\frac{1}{4}(\\cos(2t)+\\sin(2t))",
    "\\sin^{2} x+\\cos^{2} x",
    # brackets, products, infinity
    "\\left(x+1\\right)",
    "[x+1]",
    "\\left[x\\right]",
    "a\\cdot b",
    "a\\times b",
    "1/2\\cdot x",
    "a/b\\times c",
    "\\infty",
    "-\\infty",
    "\\infty x",
]

LEFT_TO_LATEX2SYMPY = [
    "\\tan^{-1}(x)",  # atan, not 1/tan
    "\\sin x \\cdot y",  # where the argument ends
    "\\sin x/2",
    "\\sin{x}^{2}",  # latex2sympy: sin(x^2)
    "\\cos^{2}(t)^{2}",
    "\\log_{b} x",
    "\\infty^2",
    "e_1",  # latex2sympy refuses it
    "\\gamma",  # Euler's constant to latex2sympy
    "I",  # the imaginary unit to latex2sympy (i is a symbol)
    "\\mu_0 I",
    "1/2x",
    "x^23",
    "\\left. x \\right|",
    "\\mathrm{e}",
    "x!",
    "|x|",
    "1,2",
    "x \\le 2",
    "\\sqrt{8} is it",
]


def latex(text: str) -> sympy.Expr:
    return latex2sympy(text, conversion_config=ConversionConfig(lowercase_symbols=False))


@pytest.mark.parametrize("text", READ)
def test_the_fast_parser_reads_as_latex2sympy_does(text: str) -> None:
    fast, slow = parse_simple(text), latex(text)
    same = sympy.srepr(fast) == sympy.srepr(slow) or sympy.simplify(fast - slow.doit()) == 0
    assert same, (sympy.srepr(fast), sympy.srepr(slow))
    # The same symbols: a name spelled differently would never cancel against the other's.
    assert fast.free_symbols == slow.free_symbols


@pytest.mark.parametrize("text", LEFT_TO_LATEX2SYMPY)
def test_what_it_cannot_read_exactly_is_left_to_latex2sympy(text: str) -> None:
    with pytest.raises(Unsupported):
        parse_simple(text)


@pytest.fixture(scope="module")
def checker() -> Iterator[MathChecker]:
    with MathChecker() as c:
        yield c


@pytest.mark.parametrize(
    ("answer", "gold", "correct"),
    [
        ("C_1 e^t + C_2 e^{-t}", "C_{1}e^{t}+C_{2}e^{-t}", True),
        ("e^{-t}C_{2}+C_{1}e^{t}", "C_{1}e^{t}+C_{2}e^{-t}", True),
        ("C_1 e^t + C_3 e^{-t}", "C_{1}e^{t}+C_{2}e^{-t}", False),
        ("\\omega_{n}\\sqrt{1-\\zeta^2}", "\\omega_n \\sqrt{1-\\zeta^{2}}", True),
        ("\\sin^2 x + \\cos^2 x", "1", True),
        ("2\\sin x\\cos x", "\\sin(2x)", True),
        ("\\ln x", "\\log x", False),  # e against 10
        ("\\frac{\\ln x}{\\ln 10}", "\\log x", True),
        ("\\sqrt{2}\\cos(2t-\\frac{\\pi}{4})", "\\cos(2t)+\\sin(2t)", True),
        ("\\mu_0 I", "I \\mu_{0}", True),
    ],
)
def test_answers_in_the_forms_it_reads_are_judged_as_before(
    checker: MathChecker, answer: str, gold: str, correct: bool
) -> None:
    result = checker.check(f"The answer is $\\boxed{{{answer}}}$.", gold)
    assert result.correct is correct, result
