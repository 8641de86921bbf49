"""Test-code cases: HumanEval's check(candidate), MBPP's asserts, unittest methods.

The parsing and the plain-data wire format are checked here on their own; the verdicts on
the project's HumanEval-, MBPP- and unittest-style sets (tests/data) and the behaviours a
test relies on run in both backends. The attacks on the pass report are in test_hostile.py.
"""

from __future__ import annotations

import json
import math
from collections import Counter, namedtuple
from pathlib import Path
from typing import Any

import pytest
from harness import Harness

from rlfleet.sandbox import convert
from rlfleet.sandbox.cases import CaseError, parse_case
from rlfleet.sandbox.records import CodeCase, CodeTest, Verdict
from rlfleet.sandbox.testcode import unittest_methods
from rlfleet.sandbox.worker import testwire

DATA = Path(__file__).resolve().parent / "data"


def rows(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def humaneval_case(row: dict[str, Any], solution: str | None = None) -> dict[str, Any]:
    """HumanEval's form: the program is prompt + completion, the test is TEST + check(ENTRY)."""
    completion = row["canonical_solution"] if solution is None else solution
    return {
        "id": row["task_id"],
        "code": row["prompt"] + completion,
        "tests": [{"test_code": row["test"] + f"\ncheck({row['entry_point']})\n"}],
    }


def mbpp_case(row: dict[str, Any], code: str | None = None) -> dict[str, Any]:
    """MBPP's form: one assert per test item, after the set's setup code."""
    setup = row["test_setup_code"]
    return {
        "id": str(row["task_id"]),
        "code": row["code"] if code is None else code,
        "tests": [{"test_code": f"{setup}\n{line}\n"} for line in row["test_list"]],
    }


def unittest_case(row: dict[str, Any], code: str | None = None) -> dict[str, Any]:
    return {
        "id": row["task_id"],
        "code": row["code"] if code is None else code,
        "tests": [{"test_code": row["test"]}],
    }


def case(code: str, *test_codes: str, **kw: Any) -> dict[str, Any]:
    return {
        "id": "t",
        "kind": "code",
        "language": "python",
        "code": code,
        "tests": [{"test_code": t} for t in test_codes],
        **kw,
    }


# ---------------------------------------------------------------------- parsing (judge side)


UNITTEST_CODE = (
    "import unittest\n"
    "from unittest import TestCase\n"
    "class Helper:\n"
    "    def test_not_a_case(self): pass\n"
    "class Base(unittest.TestCase):\n"
    "    def test_b(self): pass\n"
    "    def helper(self): pass\n"
    "class Child(Base):\n"
    "    def test_a(self): pass\n"
    "class Async(unittest.IsolatedAsyncioTestCase):\n"
    "    async def test_c(self): pass\n"
    "class Plain(TestCase):\n"
    "    def test_d(self): pass\n"
)


def test_unittest_methods_found_as_the_loader_finds_them() -> None:
    assert unittest_methods(UNITTEST_CODE) == (
        "Base.test_b",
        "Child.test_a",
        "Child.test_b",
        "Async.test_c",
        "Plain.test_d",
    )
    assert unittest_methods("def check(c):\n    assert c(1) == 2\ncheck(f)\n") == ()


def test_unittest_class_without_tests_is_refused() -> None:
    with pytest.raises(ValueError, match="without a single test method"):
        unittest_methods(
            "import unittest\nclass T(unittest.TestCase):\n    def helper(self): pass\n"
        )


def test_test_code_items_parse_into_units() -> None:
    c = parse_case(case("def f(): return 1", "assert f() == 1", UNITTEST_CODE))
    assert isinstance(c, CodeCase)
    assert c.tests[0] == CodeTest(test_code="assert f() == 1")
    assert isinstance(c.tests[1], CodeTest) and len(c.tests[1].methods) == 5
    assert c.test_count == 6


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"tests": [{"test_code": "assert 1"}, {"stdin": "", "stdout": ""}]},
            "tests[1].test_code: missing",
        ),
        ({"tests": [{"test_code": 3}]}, "tests[0].test_code: expected str, got int"),
        (
            {"tests": [{"test_code": "assert (", "stdout": ""}]},
            "tests[0].stdout: not used with test_code",
        ),
        (
            {"tests": [{"test_code": "assert ("}]},
            "tests[0].test_code: syntax error: '(' was never closed (line 1)",
        ),
        ({"fn_name": "f"}, "fn_name: not used with test-code tests"),
        ({"checker": {"type": "tokens"}}, "checker: not used with test-code tests"),
        ({"language": "cpp"}, "tests: test-code tests are not supported for cpp"),
        (
            {"tests": [{"test_code": "import unittest\nclass T(unittest.TestCase): pass\n"}]},
            "tests[0].test_code: unittest classes without a single test method",
        ),
    ],
)
def test_bad_test_code_items_name_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(CaseError) as err:
        parse_case({**case("def f(): return 1", "assert f() == 1"), **change})
    assert str(err.value).startswith(message), err.value


def test_test_code_suites_cross_the_proto_unchanged() -> None:
    c = parse_case(case("def f(): return 1", "assert f() == 1", UNITTEST_CODE, time_limit_s=3))
    assert isinstance(c, CodeCase)
    req = convert.case_to_request(c)
    assert not req.code.problem.HasField("checker")
    assert convert.request_to_case(req, {}) == c
    assert convert.problem_json(c)["tests"] == [
        {"test_code": "assert f() == 1"},
        {"test_code": UNITTEST_CODE},
    ]
    assert "checker" not in convert.problem_json(c)


def test_a_problem_with_two_kinds_of_tests_is_refused() -> None:
    from rlfleet.v1 import verifier_pb2 as pb

    problem = pb.Problem(
        stdio_tests=[pb.StdioTest(stdin="", stdout="1")],
        code_tests=[pb.CodeTest(test_code="assert 1")],
    )
    with pytest.raises(CaseError, match=r"problem\.code_tests: a problem has one kind of tests"):
        convert.problem_to_dict(problem)


# ------------------------------------------------------------------------ plain data on the wire


PLAIN: list[object] = [
    None,
    True,
    0,
    -7,
    1 << 200,
    -(1 << 70),
    1.5,
    float("inf"),
    "h\u00e9\n\ud800",
    b"\x00\xff",
    2 - 3j,
    [1, [2, (3,)]],
    (),
    {1: "a", (1, 2): [None], "k": {frozenset({1}): {2.5}}},
    set(),
    frozenset({"a", "b"}),
]


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_plain_values_round_trip_with_their_exact_types(value: object) -> None:
    wire = json.loads(json.dumps(testwire.encode(value, False)))
    assert same(testwire.decode(wire), value)


def same(a: Any, b: Any) -> bool:
    """Equal, with the same exact types all the way down (a tuple stays a tuple)."""
    if type(a) is not type(b) or a != b:
        return False
    if isinstance(a, list | tuple):
        return all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        keys = {k: k for k in b}
        return all(same(k, keys[k]) and same(v, b[k]) for k, v in a.items())
    if isinstance(a, set | frozenset):
        others = {x: x for x in b}
        return all(same(x, others[x]) for x in a)
    return True


def test_nan_round_trips() -> None:
    assert math.isnan(testwire.decode(json.loads(json.dumps(testwire.encode(math.nan, False)))))


def test_the_tests_side_refuses_what_is_not_plain() -> None:
    class Liar(int):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = int.__hash__

    for value in (Liar(3), [object()], Counter(a=1), (x for x in [1])):
        with pytest.raises(TypeError, match="is not plain data"):
            testwire.encode(value, False)


def test_the_programs_side_turns_subclasses_into_their_base() -> None:
    Point = namedtuple("Point", "x y")
    assert testwire.encode(Point(1, 2), True) == {"t": [1, 2]}
    assert testwire.encode(Counter("aa"), True) == {"d": [["a", 2]]}
    assert testwire.encode(bytearray(b"x"), True) == {"b": "78"}
    with pytest.raises(TypeError, match="a value of type generator is not plain data"):
        testwire.encode((x for x in [1]), True)


@pytest.mark.parametrize(
    "wire",
    [[1, 2], {"l": [1], "t": [2]}, {"q": []}, {"d": [[1]]}, {"c": ["1", 0]}, {"s": [{"l": []}]}],
    ids=repr,
)
def test_malformed_values_are_refused(wire: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        testwire.decode(wire)


# ------------------------------------------------------------------------ verdicts (sandboxed)


@pytest.mark.usefixtures("clean_after")
def test_humaneval_style_canonical_solutions_pass(sandbox: Harness) -> None:
    for row in rows("humaneval_style.jsonl"):
        r = sandbox.judge(humaneval_case(row))
        assert (r.verdict, r.passed, r.total) == (Verdict.AC, 1, 1), (row["task_id"], r)


WRONG_HUMANEVAL = {
    "rlfleet-he/0": "    return sum(operations) < 0\n",
    "rlfleet-he/1": "    return [min(numbers), max(numbers)] if numbers else None\n",  # a list
    "rlfleet-he/2": "    return 1.0\n",
    "rlfleet-he/3": "    return s\n",
    "rlfleet-he/4": "    return set(text.split()), {}\n",
    "rlfleet-he/5": "    return 0.0\n",
}


@pytest.mark.usefixtures("clean_after")
def test_humaneval_style_wrong_solutions_fail(sandbox: Harness) -> None:
    for row in rows("humaneval_style.jsonl"):
        r = sandbox.judge(humaneval_case(row, WRONG_HUMANEVAL[row["task_id"]]))
        assert (r.verdict, r.reward) == (Verdict.WA, 0.0), (row["task_id"], r)
        assert "AssertionError" in r.message


@pytest.mark.usefixtures("clean_after")
def test_mbpp_style_one_assert_per_test(sandbox: Harness) -> None:
    for row in rows("mbpp_style.jsonl"):
        r = sandbox.judge(mbpp_case(row))
        n = len(row["test_list"])
        assert (r.verdict, r.passed, r.total) == (Verdict.AC, n, n), (row["task_id"], r)
    # Right on some asserts only: partial counts, the first failure's message.
    row = rows("mbpp_style.jsonl")[1]
    r = sandbox.judge(mbpp_case(row, "def is_not_prime(n):\n    return n % 2 == 0\n"))
    assert (r.verdict, r.passed, r.total) == (Verdict.WA, 2, 4), r
    assert [t.verdict for t in r.tests] == [Verdict.WA, Verdict.AC, Verdict.WA, Verdict.AC]


@pytest.mark.usefixtures("clean_after")
def test_unittest_style_each_method_a_test(sandbox: Harness) -> None:
    first, second = rows("unittest_style.jsonl")
    r = sandbox.judge(unittest_case(first))
    assert (r.verdict, r.passed, r.total) == (Verdict.AC, 4, 4), r
    r = sandbox.judge(unittest_case(second))  # setUpClass, setUp, inherited methods
    assert (r.verdict, r.passed, r.total) == (Verdict.AC, 4, 4), r
    # Methods in the loader's order: test_empty_raises, test_items_are_a_tuple,
    # test_mean_scaled, test_total. Without the ValueError, only the first one fails, and
    # returning a list where a tuple is expected fails the second.
    wrong = (
        "def task_func(values, scale=1.0):\n"
        "    total = sum(values)\n"
        "    return {'total': total * scale, 'mean': total * scale / max(len(values), 1),"
        " 'items': list(values)}\n"
    )
    r = sandbox.judge(unittest_case(first, wrong))
    assert [t.verdict for t in r.tests] == [Verdict.WA, Verdict.WA, Verdict.AC, Verdict.AC], r
    assert "AssertionError: ValueError not raised" in r.tests[0].message


@pytest.mark.usefixtures("clean_after")
def test_exceptions_cross_as_builtin_classes(sandbox: Harness) -> None:
    code = (
        "class Invalid(ValueError):\n    pass\n"
        "def parse(s):\n"
        "    if not s.isdigit():\n        raise Invalid('not a number: ' + s)\n"
        "    return int(s)\n"
    )
    test = (
        "try:\n    parse('x')\nexcept ValueError as e:\n"
        "    assert type(e) is ValueError and e.args == ('not a number: x',)\n"
        "else:\n    raise AssertionError('no error')\n"
        "assert parse('12') == 12\n"
    )
    r = sandbox.judge(case(code, test))
    assert r.verdict is Verdict.AC, r
    # Uncaught in the test: a runtime error, whose message names the program's call.
    r = sandbox.judge(case(code, "parse('x')\n"))
    assert r.verdict is Verdict.RE, r
    assert "ValueError: not a number: x" in r.message
    assert "raised in the program by parse()" in r.message


@pytest.mark.usefixtures("clean_after")
def test_runtime_errors_and_limits(sandbox: Harness) -> None:
    check = "assert f(3) == 6\n"
    cases = {
        "missing function": ("def g(x):\n    return 2 * x\n", Verdict.RE, "NameError"),
        "error at import": ("import nonexistent_module\n", Verdict.RE, "ModuleNotFoundError"),
        "not plain data": (
            "def f(x):\n    return (y for y in [x])\n",
            Verdict.RE,
            "not plain data",
        ),
        "busy loop": ("def f(x):\n    while True:\n        pass\n", Verdict.TLE, ""),
        "memory bomb": (
            "def f(x):\n    a = []\n    while True:\n        a.append(bytearray(1 << 20))\n",
            Verdict.MLE,
            "",
        ),
        "syntax error": ("def f(x):\n    return (\n", Verdict.CE, "SyntaxError"),
    }
    for name, (code, verdict, words) in cases.items():
        r = sandbox.judge(case(code, check, time_limit_s=1, memory_limit_mb=64))
        assert r.verdict is verdict, (name, r)
        assert words in r.message, (name, r.message)


@pytest.mark.usefixtures("clean_after")
def test_the_programs_prints_and_state(sandbox: Harness) -> None:
    # Prints go to stderr and change nothing; state persists across calls in one test.
    code = (
        "calls = []\n"
        "print('loading')\n"
        "def f(x):\n"
        "    print('called with', x)\n"
        "    calls.append(x)\n"
        "    return len(calls)\n"
    )
    r = sandbox.judge(case(code, "assert f(5) == 1\nassert f(6) == 2\n"))
    assert r.verdict is Verdict.AC, r
    # Copies cross, not the objects: a change in place stays in the program.
    code = "def sort_in_place(xs):\n    xs.sort()\n"
    r = sandbox.judge(case(code, "xs = [2, 1]\nsort_in_place(xs)\nassert xs == [2, 1]\n"))
    assert r.verdict is Verdict.AC, r


@pytest.mark.usefixtures("clean_after")
def test_early_stop_counts_methods(sandbox: Harness) -> None:
    first = rows("unittest_style.jsonl")[0]
    r = sandbox.judge(
        {**unittest_case(first, "def task_func(*a, **k):\n    return {}\n"), "early_stop": True}
    )
    assert (r.verdict, r.passed, r.total, len(r.tests)) == (Verdict.WA, 0, 4, 1), r


@pytest.mark.usefixtures("clean_after")
def test_both_processes_have_a_clean_environment(sandbox: Harness) -> None:
    clean = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
    code = "import os\ndef env():\n    return dict(os.environ)\n"
    test = f"import os\nassert env() == {clean!r}\nassert dict(os.environ) == {clean!r}\n"
    r = sandbox.judge(case(code, test))
    assert r.verdict is Verdict.AC, r


@pytest.mark.usefixtures("clean_after")
def test_test_code_that_exits_has_not_run_to_its_end(sandbox: Harness) -> None:
    code = "def f(x):\n    return x\n"
    r = sandbox.judge(case(code, "import sys\nassert f(1) == 1\nsys.exit(0)\nassert f(2) == 3\n"))
    assert r.verdict is Verdict.RE, r
    assert "SystemExit: 0" in r.message
