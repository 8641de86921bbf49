from __future__ import annotations

import pytest

from rlfleet.sandbox.cases import CaseError, parse_case
from rlfleet.sandbox.records import CallTest, CheckerKind, CodeCase, MathCase, StdioTest


def code(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "c1",
        "kind": "code",
        "language": "python",
        "code": "print(1)",
        "tests": [{"stdin": "", "stdout": "1"}],
    }
    base.update(kw)
    return base


def test_code_case_defaults() -> None:
    c = parse_case(code())
    assert isinstance(c, CodeCase)
    assert c.tests == (StdioTest(stdin="", stdout="1"),)
    assert (c.time_limit_s, c.memory_limit_mb, c.checker.kind) == (2.0, 256, CheckerKind.EXACT)


def test_call_case() -> None:
    c = parse_case(code(fn_name="f", tests=[{"args": [1], "expected": 2}]))
    assert isinstance(c, CodeCase) and c.is_call
    assert c.tests == (CallTest(args=[1], kwargs={}, expected=2),)


def test_math_case_accepts_numeric_gold() -> None:
    assert parse_case({"id": 7, "kind": "math", "completion": "x", "gold": 3}) == MathCase(
        id="7", completion="x", gold="3"
    )


def test_language_aliases() -> None:
    c = parse_case(code(language="C++"))
    assert isinstance(c, CodeCase) and c.language == "cpp"


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ([1, 2], "case"),
        ({"kind": "code"}, "id"),
        (code(kind="essay"), "kind"),
        (code(language="cobol"), "language"),
        (code(code=None), "code"),
        (code(tests=[]), "tests"),
        (code(tests="x"), "tests"),
        (code(tests=[{"stdin": ""}]), "tests[0].stdout"),
        (code(tests=[{"stdout": "1"}, 3]), "tests[1]"),
        (code(tests=[{"stdin": 5, "stdout": "1"}]), "tests[0].stdin"),
        (code(fn_name="f", tests=[{"expected": 1}]), "tests[0].args"),
        (code(fn_name="f", tests=[{"args": []}]), "tests[0].expected"),
        (code(fn_name="not valid"), "fn_name"),
        (code(language="cpp", fn_name="f", tests=[{"args": [], "expected": 1}]), "fn_name"),
        (code(time_limit_s=0), "time_limit_s"),
        (code(time_limit_s=1e9), "time_limit_s"),
        (code(time_limit_s="2"), "time_limit_s"),
        (code(memory_limit_mb=-1), "memory_limit_mb"),
        (code(checker={"type": "fuzzy"}), "checker.type"),
        (code(checker={"type": "float", "abs_tol": "x"}), "abs_tol"),
        (code(checker={"type": "custom"}), "checker.code"),
        (code(early_stop="yes"), "early_stop"),
        ({"id": "m", "kind": "math", "completion": "x"}, "gold"),
        ({"id": "m", "kind": "math", "gold": "1"}, "completion"),
    ],
)
def test_errors_name_the_field(case: object, field: str) -> None:
    with pytest.raises(CaseError) as err:
        parse_case(case)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
