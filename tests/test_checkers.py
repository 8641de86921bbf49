from __future__ import annotations

import pytest

from rlfleet.sandbox import checkers
from rlfleet.sandbox.records import CheckerKind, CheckerSpec


@pytest.mark.parametrize(
    ("expected", "actual", "same"),
    [
        ("1 2\n3\n", "1 2\n3", True),
        ("1 2\n3\n", "1 2   \n3\n\n\n", True),
        ("1 2\n3\n", "1 2\r\n3\r\n", True),
        ("1 2\n3\n", "1  2\n3\n", False),
        ("Yes\n", "yes\n", False),
        ("a\n\nb\n", "a\nb\n", False),
        ("", "\n\n", True),
        ("x\n", " x\n", False),
    ],
)
def test_exact(expected: str, actual: str, same: bool) -> None:
    assert checkers.exact_match(expected, actual) is same


def test_tokens() -> None:
    assert checkers.tokens_match("1 2\n3", "1\n2   3\n")
    assert not checkers.tokens_match("1 2 3", "1 2")
    assert not checkers.tokens_match("YES", "yes")


@pytest.mark.parametrize(
    ("expected", "actual", "same"),
    [
        ("0.333333", "0.3333333333", True),
        ("1e9", "1000000000.5", True),  # relative tolerance
        ("0.5 abc", "0.5000001 abc", True),
        ("0.5 abc", "0.5 abd", False),
        ("0.5", "0.6", False),
        ("0.5", "nan", False),
        ("nan", "nan", True),
        ("inf", "inf", True),
        ("1 2", "1", False),
        ("1.0", "one", False),
    ],
)
def test_float(expected: str, actual: str, same: bool) -> None:
    assert checkers.float_tokens_match(expected, actual, abs_tol=1e-6, rel_tol=1e-6) is same


def test_stdio_match_dispatch() -> None:
    assert checkers.stdio_match(CheckerSpec(kind=CheckerKind.TOKENS), "1 2", "1\n2")
    with pytest.raises(ValueError, match="custom"):
        checkers.stdio_match(CheckerSpec(kind=CheckerKind.CUSTOM), "", "")


@pytest.mark.parametrize(
    ("expected", "printed", "same"),
    [
        ((1, 2), "[1, 2]\n", True),
        ([1, [2, 3]], "[1, [2, 3]]", True),
        (1, "1.0", True),
        (1, "true", False),
        (True, "1", False),
        (None, "null", True),
        (None, "", False),
        ({"a": (1,)}, '{"a": [1]}', True),
        ({"a": 1}, '{"a": 1, "b": 2}', False),
        ("x", '"x"', True),
        ([0, 1], "debug noise\n[0, 1]\n", True),  # the harness's line is the last one
        ([0, 1], "[0, 1]\ngarbage", False),
    ],
)
def test_call_output(expected: object, printed: str, same: bool) -> None:
    assert checkers.call_output_match(expected, printed) is same


def test_call_output_float_tolerance() -> None:
    spec = CheckerSpec(kind=CheckerKind.FLOAT, abs_tol=1e-9, rel_tol=1e-9)
    assert checkers.call_output_match([0.3], "[0.30000000000000004]", spec)
    assert not checkers.call_output_match([0.3], "[0.30000000000000004]")
