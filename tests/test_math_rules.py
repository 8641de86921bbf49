"""The answer-reading rules of docs/math.md, one test per rule, each with both sides: what
must be accepted and what must stay wrong (a false positive teaches the model a hack)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rlfleet.sandbox.mathcheck import MathCheckConfig, MathChecker


@pytest.fixture(scope="module")
def checker() -> Iterator[MathChecker]:
    with MathChecker(MathCheckConfig(processes=2)) as c:
        yield c


def _verdicts(checker: MathChecker, cases: list[tuple[str, str, bool]]) -> list[str]:
    """The cases whose verdict is wrong, described (empty when all are right)."""
    wrong = []
    for completion, gold, same in cases:
        r = checker.check(completion, gold)
        if r.correct is not same:
            wrong.append(f"{completion!r} vs gold {gold!r}: {r}")
    return wrong


def test_rule_undefined_values_equal_nothing(checker: MathChecker) -> None:
    assert (
        _verdicts(
            checker,
            [
                ("\\boxed{\\frac{1}{0}}", "\\frac{2}{0}", False),
                ("\\boxed{1:0}", "2:0", False),
                ("\\boxed{\\frac{0}{0}}", "\\frac{0}{0}", True),  # the same text is the same answer
                ("\\boxed{\\frac{x}{0}}", "\\frac{1}{0}", False),
                ("\\boxed{\\tan\\frac{\\pi}{2}}", "\\frac{1}{0}", False),
                ("\\boxed{\\infty}", "\\infty", True),  # infinity is a value, not undefined
                ("\\boxed{-\\infty}", "\\infty", False),
            ],
        )
        == []
    )


def test_rule_times_of_day_compare_as_times(checker: MathChecker) -> None:
    assert (
        _verdicts(
            checker,
            [
                ("\\boxed{7:00}", "4:00", False),
                ("\\boxed{4:00}", "4:00", True),
                ("\\boxed{04:00}", "4:00", True),
                ("\\boxed{4:30}", "4:00", False),
                ("\\boxed{7:00 \\text{ PM}}", "19:00", True),
                ("\\boxed{7:00 \\text{ p.m.}}", "7:00 \\text{ PM}", True),
                ("\\boxed{7:00 \\text{ AM}}", "7:00 \\text{ PM}", False),
                ("\\boxed{12:15 \\text{ am}}", "0:15", True),
                ("\\boxed{7:00}", "7:00 \\text{ PM}", False),  # no pm: a 24-hour clock
                ("\\boxed{4}", "4:00", False),  # a time is not a number
                ("\\boxed{10:30:15}", "10:30:15", True),
                ("\\boxed{10:30:16}", "10:30:15", False),
                ("\\boxed{1:3}", "2:6", True),  # a ratio, not a time
                ("\\boxed{2:9}", "9:2", False),
                # An hour with am/pm is a time too.
                ("\\boxed{5\\text{am}}", "5am", True),
                ("\\boxed{5 \\text{ p.m.}}", "17:00", True),
                ("\\boxed{5pm}", "5am", False),
                ("\\boxed{5}", "5am", False),
                ("\\boxed{5\\text{ am}}", "5", False),
            ],
        )
        == []
    )


def test_rule_a_named_value_is_its_value(checker: MathChecker) -> None:
    assert (
        _verdicts(
            checker,
            [
                ("\\boxed{(1,5)}", "(x,y)=(1,5)", True),
                ("\\boxed{(5,1)}", "(x,y)=(1,5)", False),
                ("\\boxed{x=1, y=5}", "(x,y)=(1,5)", True),
                ("\\boxed{x=5, y=1}", "(x,y)=(1,5)", False),
                ("\\boxed{(2,3)}", "x=2 \\text{ and } y=3", True),  # named values in order
                ("\\boxed{(3,2)}", "x=2 \\text{ and } y=3", False),
                ("\\boxed{(2,3)}", "x=2, y=3", True),
                ("\\boxed{(x, y) = (1, 5)}", "(1,5)", True),
                ("\\boxed{7}", "BC=7", True),
                ("\\boxed{8}", "BC=7", False),
                ("\\boxed{BC = 7}", "7", True),
                ("\\boxed{x = 7}", "BC=7", True),
                ("\\boxed{2:9}", "a:b=2:9", True),
                ("\\boxed{9:2}", "a:b=2:9", False),
                ("\\boxed{30^\\circ}", "\\angle ABC = 30^\\circ", True),
                ("\\boxed{\\frac{\\pi}{4}}", "\\theta = \\frac{\\pi}{4}", True),
                ("\\boxed{x = 3}", "x=3", True),
                ("\\boxed{x = 4}", "x=3", False),
                # a one-letter name may be the variable of an equation: the relation decides
                ("\\boxed{2y = 4x + 2}", "y=2x+1", True),
                ("\\boxed{2y = 4x + 4}", "y=2x+1", False),
                ("\\boxed{x = 3}", "y=3", False),
                ("\\boxed{6}", "xy=6", False),  # xy is a product, not a name
            ],
        )
        == []
    )


def test_rule_a_gold_of_several_boxes_or_joined_by_and_is_all_its_values(
    checker: MathChecker,
) -> None:
    assert (
        _verdicts(
            checker,
            [
                ("\\boxed{4, -1}", "\\boxed{4} and \\boxed{-1}", True),
                ("\\boxed{-1, 4}", "\\boxed{4} and \\boxed{-1}", True),
                ("\\boxed{-1}", "\\boxed{4} and \\boxed{-1}", False),  # not just the last box
                ("\\boxed{4}", "\\boxed{4} and \\boxed{-1}", False),
                ("\\boxed{5}", "\\boxed{5} so \\boxed{5}", True),  # the same box twice: one value
                ("\\boxed{3, 10}", "3 \\text{ and } 10", True),
                ("\\boxed{3 \\text{ and } 10}", "3 \\text{ and } 10", True),
                ("\\boxed{3}", "3 \\text{ and } 10", False),
                ("\\boxed{3, 11}", "3 \\text{ and } 10", False),
                ("\\boxed{5, 17, 29}", "5, 17, and 29", True),
                ("\\boxed{29, 5, 17}", "5, 17, and 29", True),
                ("\\boxed{5, 17}", "5, 17, and 29", False),
                ("\\boxed{5, 17, 29, 41}", "5, 17, and 29", False),
            ],
        )
        == []
    )


def test_rule_several_boxes_together_against_a_multi_valued_gold(checker: MathChecker) -> None:
    """Several boxes of different value are one answer when the gold is several values in no
    order and the boxes are not offered as alternatives; against a single-valued gold (or
    joined by "or") they are hedging."""
    assert (
        _verdicts(
            checker,
            [
                ("So \\boxed{x=2} and \\boxed{x=-3}.", "2, -3", True),
                ("So \\boxed{-3} and \\boxed{2}.", "2, -3", True),
                ("Roots: \\boxed{2}, \\boxed{-3}", "\\{-3, 2\\}", True),
                ("So \\boxed{x=2} and \\boxed{x=-2}.", "2, -3", False),  # a wrong value
                ("So \\boxed{2}, \\boxed{-3} and \\boxed{5}.", "2, -3", False),  # an extra value
                ("So \\boxed{2}.", "2, -3", False),  # a missing value
                ("So \\boxed{2} or \\boxed{-3}.", "2, -3", False),  # alternatives, not the list
                ("So \\boxed{x=2} or \\boxed{x=-3}.", "x=2 \\text{ or } x=-3", True),
                ("So \\boxed{2} or \\boxed{3}.", "2", False),
                ("So \\boxed{2} and \\boxed{3}.", "2", False),  # single-valued gold: hedging
                ("So \\boxed{2} and \\boxed{3}.", "(2, 3)", False),  # a tuple has an order
                ("\\boxed{2} and \\boxed{-3}", "\\boxed{2} and \\boxed{-3}", True),
            ],
        )
        == []
    )


def test_rule_inequalities_are_the_sets_they_describe(checker: MathChecker) -> None:
    assert (
        _verdicts(
            checker,
            [
                ("\\boxed{(-1, 4]}", "-1 < x \\le 4", True),
                ("\\boxed{-1 < x \\leq 4}", "(-1, 4]", True),
                ("\\boxed{x \\in (-1, 4]}", "-1 < x \\le 4", True),
                ("\\boxed{4 \\geq x > -1}", "-1 < x \\le 4", True),
                ("\\boxed{(-1, 4)}", "-1 < x \\le 4", False),
                ("\\boxed{[-1, 4]}", "-1 < x \\le 4", False),
                ("\\boxed{x > -1}", "-1 < x \\le 4", False),
                ("\\boxed{\\{-1, 4\\}}", "-1 < x \\le 4", False),  # a set of two points
                ("\\boxed{[-3,-2] \\cup [2,3]}", "2 \\le |t| \\le 3", True),
                ("\\boxed{[2,3]}", "2 \\le |t| \\le 3", False),
                ("\\boxed{[-3,3]}", "2 \\le |t| \\le 3", False),
                ("\\boxed{x \\geq 3}", "[3, \\infty)", True),
                ("\\boxed{x > 3}", "[3, \\infty)", False),
                # inequalities joined by "or" are one set, a union, not alternatives
                ("\\boxed{x < 1 \\text{ or } x > 2}", "(-\\infty, 1) \\cup (2, \\infty)", True),
                ("\\boxed{(-\\infty, 1) \\cup (2, \\infty)}", "x < 1 \\text{ or } x > 2", True),
                ("\\boxed{x \\le 1 \\text{ or } x > 2}", "x < 1 \\text{ or } x > 2", False),
                ("\\boxed{x < 1 \\text{ or } x > 2}", "(-\\infty, 1) \\cup [2, \\infty)", False),
                ("\\boxed{x < 1 \\text{ or } x > 2}", "(-\\infty, 1)", False),
                ("\\boxed{x < 1 \\text{ or } x = 2}", "(-\\infty, 1)", False),  # a hedge
                ("\\boxed{1 \\text{ or } x > 2}", "(2, \\infty)", False),
            ],
        )
        == []
    )


def test_rule_semicolons_separate_items(checker: MathChecker) -> None:
    assert (
        _verdicts(
            checker,
            [
                ("\\boxed{1; 2}", "1, 2", True),
                ("\\boxed{2; 1}", "1, 2", True),
                ("\\boxed{1; 3}", "1, 2", False),
                ("\\boxed{(1;2)}", "(1,2)", True),
                ("\\boxed{(2;1)}", "(1,2)", False),  # a tuple keeps its order
                ("\\boxed{(1,2); (3,4)}", "(3,4), (1,2)", True),
                ("\\boxed{(1,2); (3,5)}", "(3,4), (1,2)", False),
                ("\\boxed{1; 2}", "2", False),  # a list against one value is hedging
            ],
        )
        == []
    )


def test_rule_a_set_of_one_element_is_the_element(checker: MathChecker) -> None:
    assert (
        _verdicts(
            checker,
            [
                ("\\boxed{\\{5\\}}", "5", True),
                ("\\boxed{5}", "\\{5\\}", True),
                ("\\boxed{\\{(1,2)\\}}", "(1,2)", True),
                ("\\boxed{(1,2)}", "\\{(1, 2)\\}", True),
                ("\\boxed{\\{6\\}}", "5", False),
                ("\\boxed{\\{(2,1)\\}}", "(1,2)", False),
                ("\\boxed{\\{5, 6\\}}", "\\{5\\}", False),
                ("\\boxed{\\{1,2\\}}", "(1,2)", False),  # a set is not a tuple
                ("\\boxed{(1,2)}", "\\{1,2\\}", False),
            ],
        )
        == []
    )


def test_rule_units_in_text_commands_are_dropped(checker: MathChecker) -> None:
    assert (
        _verdicts(
            checker,
            [
                ("\\boxed{42\\textnormal{ cm}}", "42", True),
                ("\\boxed{42\\textbf{ cm}}", "42", True),
                ("\\boxed{42\\,\\mathrm{cm}}", "42", True),
                ("\\boxed{42 \\mathrm{~cm}}", "42", True),
                ("\\boxed{42\\textnormal{ cm}^2}", "42", True),
                ("\\boxed{\\text{5 cm}}", "5", True),
                ("\\boxed{2\\pi\\text{ cm}}", "2\\pi", True),
                ("\\boxed{4\\sqrt{2}\\textnormal{ cm}^2}", "\\sqrt{32}", True),
                ("\\boxed{43\\textnormal{ cm}}", "42", False),
                ("\\boxed{2\\pi\\text{ cm}}", "3\\pi", False),
                # one-letter constants are not units
                ("\\boxed{2\\mathrm{e}}", "2", False),
                ("\\boxed{3\\mathrm{i}}", "3", False),
                ("\\boxed{2\\text{e}}", "2", False),
                # words after a variable may be its condition, not a unit
                ("\\boxed{n\\text{ odd}}", "n", False),
                ("\\boxed{n\\text{ odd}}", "n\\text{ even}", False),
            ],
        )
        == []
    )


def _pmatrix(entries: str) -> str:
    return "\\begin{pmatrix} " + entries + " \\end{pmatrix}"


def _boxed(answer: str) -> str:
    return "\\boxed{" + answer + "}"


def test_rule_matrices_compare_entry_by_entry(checker: MathChecker) -> None:
    gold = _pmatrix("2\\sqrt{3} \\\\ \\frac14 \\\\ 2+y")
    assert (
        _verdicts(
            checker,
            [
                (_boxed(_pmatrix("\\sqrt{12} \\\\ 0.25 \\\\ y+2")), gold, True),
                (_boxed(_pmatrix("\\sqrt{13} \\\\ 0.25 \\\\ y+2")), gold, False),
                (_boxed(_pmatrix("\\sqrt{12} \\\\ 0.26 \\\\ y+2")), gold, False),
                (_boxed(_pmatrix("\\sqrt{12} \\\\ 0.25 \\\\ y-2")), gold, False),
                (_boxed(_pmatrix("\\sqrt{12} \\\\ 0.25")), gold, False),  # another shape
                (_boxed(_pmatrix("\\sqrt{12} & 0.25 & y+2")), gold, False),  # a row, not a column
                (
                    "\\boxed{\\begin{bmatrix} 1 & \\frac{1}{2} \\\\ 0 & 1 \\end{bmatrix}}",
                    _pmatrix("1 & 0.5 \\\\ 0 & 1"),
                    True,
                ),
                (_boxed(_pmatrix("1 & 2 \\\\ 3 & 4")), _pmatrix("1 & 2 \\\\ 4 & 3"), False),
                (
                    "\\boxed{\\begin{vmatrix} 1 & 2 \\\\ 3 & 4 \\end{vmatrix}}",
                    _pmatrix("1 & 2 \\\\ 3 & 4"),
                    False,  # a determinant is not the matrix
                ),
                # undefined entries equal nothing
                (_boxed(_pmatrix("\\frac{1}{0} \\\\ 1")), _pmatrix("\\frac{2}{0} \\\\ 1"), False),
            ],
        )
        == []
    )


def test_rule_an_answer_line_states_its_value(checker: MathChecker) -> None:
    assert (
        _verdicts(
            checker,
            [
                ("work\nFinal Answer: The smallest n is 17.", "17", True),
                ("work\nFinal Answer: The smallest $n$ is $17$.", "17", True),
                ("work\nFinal Answer: The smallest n is 18.", "17", False),
                ("work\nAnswer: 64. I hope it is correct.<|endoftext|>", "64", True),
                ("work\nAnswer: 65. I hope it is correct.<|endoftext|>", "64", False),
                ("work\nAnswer: $64$ <|im_end|></s>", "64", True),
                ("work\nFinal Answer: The final answer is $7$. I hope it is correct.", "7", True),
                ("work\nAnswer: the total equals $12$ dollars.", "12", True),
                ("work\nAnswer: x = 4", "4", True),
                ("work\nFinal Answer: It is 2 or 3.", "3", False),  # still hedging
                ("work\nAnswer: $2$ or $3$", "3", False),
                ("The answer is 3.\nBut let me double check this.", "3", False),  # not final
            ],
        )
        == []
    )


def test_rule_a_final_statement_wins_over_intermediate_boxes(checker: MathChecker) -> None:
    assert (
        _verdicts(
            checker,
            [
                ("First \\boxed{5}, then more work.\nThe final answer is $7$.", "7", True),
                ("First \\boxed{5}, then more work.\nThe final answer is $7$.", "5", False),
                ("So \\boxed{2} or \\boxed{3}.\nFinal Answer: 3", "3", True),  # one answer now
                ("So \\boxed{12}.\nSo the answer is 12.", "12", True),
                ("So \\boxed{12}.\nI hope the answer is correct.", "12", True),  # words: the box
                ("The answer is 7.\nHence \\boxed{5}.", "5", True),  # the box comes last
                ("The answer is 7.\nHence \\boxed{5}.", "7", False),
                ("The final answer is $\\boxed{7}$.", "7", True),
            ],
        )
        == []
    )


def test_rule_a_decimal_comma_in_the_gold(checker: MathChecker) -> None:
    """A gold "2,5" cannot be 2,5 thousand: it is 2.5 against a decimal answer, and still the
    list 2, 5 against a list."""
    assert (
        _verdicts(
            checker,
            [
                ("\\boxed{2.5}", "2,5", True),
                ("\\boxed{2.50}", "2,5", True),
                ("\\boxed{-0.75}", "-0,75", True),
                ("\\boxed{3.14}", "3{,}14", True),
                ("\\boxed{2.6}", "2,5", False),
                ("\\boxed{25}", "2,5", False),
                ("\\boxed{2}", "2,5", False),
                ("\\boxed{2, 5}", "2,5", True),  # the list reading
                ("\\boxed{2500}", "2,500", True),  # three digits: a thousands separator
                ("\\boxed{2.5}", "2,500", False),
                ("\\boxed{2.5}", "2, 5", False),  # a space after the comma: a list
            ],
        )
        == []
    )


def test_rule_placeholder_boxes_are_no_answer(checker: MathChecker) -> None:
    """A box drawn as a blank (``\\boxed{\\phantom{2}}``, an empty box) is part of the text,
    not an answer: it neither answers nor makes the real answer a hedge."""
    solution = (
        "Subtracting gives \\[-3 = -7 + \\boxed{\\phantom{2}}.\\] If the number in the box is "
        "$\\boxed{4}$, all values of $x$ are solutions."
    )
    assert (
        _verdicts(
            checker,
            [
                (solution, "4", True),
                (solution, "2", False),
                ("\\boxed{\\phantom{2}}", "2", False),
                ("So \\boxed{5}, then \\boxed{}", "5", True),
                # The blank of a format instruction, written as a box.
                ("Put it as \\boxed{Your answer}. The final answer is: $\\boxed{7}$", "7", True),
                ("Put it as \\boxed{Your answer}. The final answer is: $\\boxed{7}$", "8", False),
                ("Put it as \\boxed{\\text{your final answer}}.", "7", False),
                ("\\boxed{answers}", "answers", True),  # a word that is not the blank
            ],
        )
        == []
    )


def test_rule_a_trailing_backslash_is_nothing(checker: MathChecker) -> None:
    assert (
        _verdicts(
            checker,
            [
                ("<answer>185</answer>", "185\\", True),
                ("<answer>185\\</answer>", "185", True),
                ("<answer>186</answer>", "185\\", False),
            ],
        )
        == []
    )


def test_rule_an_a_colon_line_is_an_answer_line(checker: MathChecker) -> None:
    """The Q:/A: few-shot format ends with "A: <answer>" (GSM8K's model solutions)."""
    assert (
        _verdicts(
            checker,
            [
                ("She sells 9 eggs.\nA: 18", "18", True),
                ("She sells 9 eggs.\nA: 18", "19", False),
                ("So 80,000+50,000 = 130,000\nA: 90,000", "70000", False),
                ("So the profit is 70,000\nA: 70,000", "70000", True),
                ("A: 18\nBut wait, more work.", "18", False),  # only the last line
                ("So the sum is 18\na: 18", "18", False),  # the marker is a capital A
                ("Options are A: 3 and B: 5", "3", False),  # not at the start of the line
            ],
        )
        == []
    )


def test_rule_set_builder_notation_is_the_set_of_its_inequality(checker: MathChecker) -> None:
    assert (
        _verdicts(
            checker,
            [
                ("\\boxed{[-2, 1)}", "\\{x|-2\\leq x < 1\\}", True),
                ("\\boxed{[-2, 1]}", "\\{x|-2\\leq x < 1\\}", False),
                ("\\boxed{\\{x \\mid x > 3\\}}", "(3, \\infty)", True),
                ("\\boxed{\\{x \\mid x > 3\\}}", "[3, \\infty)", False),
                ("\\boxed{\\{x \\in \\mathbb{R} : x \\geq 3\\}}", "x \\ge 3", True),
                ("\\boxed{\\{x \\mid x > 3\\} \\cup \\{x \\mid x < 1\\}}", "(3, \\infty)", False),
                ("\\boxed{\\{1, 2\\}}", "\\{1,2\\}", True),  # a set of values stays one
                # \mid is the bar: other conditions compare as written.
                (
                    "\\boxed{\\{x \\mid x = 3k, k \\in \\mathbb{Z}\\}}",
                    "\\{x|x=3k,k\\in \\mathbb{Z}\\}",
                    True,
                ),
                (
                    "\\boxed{\\{x \\mid x = 3k+1, k \\in \\mathbb{Z}\\}}",
                    "\\{x|x=3k,k\\in \\mathbb{Z}\\}",
                    False,
                ),
            ],
        )
        == []
    )


def test_rule_prose_extraction_takes_the_last_expression(checker: MathChecker) -> None:
    """Opt-in ("prose"), for base models that write no answer format: failing the strict
    rules, the last mathematical expression is the answer; alternatives stay a hedge."""
    prose = [
        ("So the total is 42 apples.", "42", True),
        ("So the total is 42 apples.", "43", False),
        ("We get $x = \\frac{1}{2}$ in the end.", "0.5", True),
        ("First 5.\nThen it is $\\sqrt{2}$", "\\sqrt{2}", True),
        ("The result: 1,000 dollars", "1000", True),
        ("It is 2 or 3.", "3", False),
        ("No number at all", "3", False),
        ("Many steps: 7, then \\boxed{5}", "5", True),  # the strict rules come first
        ("Many steps: 7, then \\boxed{5}", "7", False),
    ]
    wrong = []
    for completion, gold, same in prose:
        r = checker.check(completion, gold, extraction="prose")
        if r.correct is not same:
            wrong.append(f"{completion!r} vs {gold!r}: {r}")
    assert wrong == []
    # the strict rules stay the default: no answer format, no answer
    assert checker.check("So the total is 42 apples.", "42").reason == "no_answer"


def test_the_extraction_is_validated() -> None:
    with pytest.raises(ValueError, match="extraction must be one of strict, prose"):
        MathCheckConfig(extraction="loose")
    with MathChecker(MathCheckConfig(processes=1, extraction="prose")) as c:
        assert c.check("So the total is 42 apples.", "42").correct
        assert c.check("So the total is 42 apples.", "42", extraction="strict").reason == (
            "no_answer"
        )
        with pytest.raises(ValueError, match="extraction must be one of"):
            c.check("42", "42", extraction="loose")


async def test_prose_extraction_from_asyncio(checker: MathChecker) -> None:
    # the second needs the algebra: it leaves the loop and keeps its extraction
    first = await checker.check_async("So it is 42.", "42", extraction="prose")
    second = await checker.check_async("So it is $\\sqrt{8}$.", "2\\sqrt{2}", extraction="prose")
    strict = await checker.check_async("So it is $\\sqrt{8}$.", "2\\sqrt{2}")
    assert (first.correct, second.correct, strict.reason) == (True, True, "no_answer")


def test_rule_a_tuple_answers_a_gold_listing_its_values(checker: MathChecker) -> None:
    """A gold that lists values (``10^{3}, 10`` for x and y) is answered by a tuple of the
    same values in the same order; not in another order, and not by what may be an open
    interval."""
    assert (
        _verdicts(
            checker,
            [
                ("\\boxed{(1000, 10)}", "10^{3},10", True),
                ("\\boxed{\\left(\\frac{1}{3}, -2, 5\\right)}", "\\frac{1}{3},-2,5", True),
                ("\\boxed{(1, 2, 3)}", "1, 2, 3", True),
                ("\\boxed{(2, 1, 3)}", "1, 2, 3", False),  # a tuple keeps its order
                ("\\boxed{(10, 1000)}", "10^{3},10", False),
                ("\\boxed{(1000, 11)}", "10^{3},10", False),
                ("\\boxed{(1, 2)}", "1, 2", False),  # may be the interval from 1 to 2
                ("\\boxed{[1, 2]}", "1, 2", False),
                ("\\boxed{1, 2, 3}", "(1, 2, 3)", False),  # a tuple gold still wants a tuple
            ],
        )
        == []
    )


def test_rule_math_delimiters_in_a_gold_are_dropped(checker: MathChecker) -> None:
    """A gold written as several math spans (``(-6,6)$, $(2,6)``) is their list; an escaped
    dollar sign stays (``\\$5`` is five dollars)."""
    assert (
        _verdicts(
            checker,
            [
                ("\\boxed{(2, 6) \\text{ and } (-6, 6)}", "(-6,6)$, $(2,6)", True),
                ("\\boxed{(2, 6), (-6, 6)}", "(-6,6)$,$(2,6)", True),
                ("\\boxed{(2, 6)}", "(-6,6)$, $(2,6)", False),
                ("\\boxed{(2, 6), (6, 6)}", "(-6,6)$, $(2,6)", False),
                ("\\boxed{5}", "\\$5", True),
                ("\\boxed{6}", "\\$5", False),
            ],
        )
        == []
    )


def test_rule_a_choice_letter_with_its_content_is_the_letter(checker: MathChecker) -> None:
    """Against a gold that is a choice letter, an answer giving the letter with the choice's
    content (``(D) (2,0)``, ``C. x = 42``) is the letter; content naming another choice, or
    alternatives, are no answer of one letter."""
    assert (
        _verdicts(
            checker,
            [
                ("\\boxed{(D) (2,0)}", "D", True),
                ("\\boxed{(D) $4(x+1)=4x$}", "D", True),
                ("\\boxed{(H) $\\frac{2}{a^{2}-b^{2}}$}", "H", True),
                ("Answer: C. x = 42", "C", True),
                ("\\boxed{C}", "C. x = 42", True),  # either side may carry the content
                ("\\boxed{B}", "C. x = 42", False),
                ("\\boxed{(C) (2,0)}", "D", False),
                ("\\boxed{(D) (2,0) or (B) (1,0)}", "D", False),
                ("\\boxed{(D) 4 (B) 5}", "D", False),
                ("\\boxed{(D) (2,0)}", "(2,0)", False),  # the letter is not the value
                ("\\boxed{A \\cup B}", "A", False),  # a letter that opens an expression
            ],
        )
        == []
    )
