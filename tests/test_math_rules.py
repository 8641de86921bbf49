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
    assert _verdicts(
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
    ) == []


def test_rule_times_of_day_compare_as_times(checker: MathChecker) -> None:
    assert _verdicts(
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
        ],
    ) == []
