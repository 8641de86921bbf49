"""Every verdict and every checker, in both languages and both test formats."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from harness import Harness

from rlfleet.sandbox.records import Verdict

pytestmark = pytest.mark.usefixtures("clean_after")

ECHO_SUM_PY = "a, b = map(int, input().split())\nprint(a + b)\n"
ECHO_SUM_CPP = (
    '#include <cstdio>\nint main() { long long a, b; scanf("%lld %lld", &a, &b);'
    ' printf("%lld\\n", a + b); }\n'
)
SUM_TESTS = [{"stdin": "1 2\n", "stdout": "3\n"}, {"stdin": "5 5\n", "stdout": "10"}]


def code_case(
    language: str, code: str, tests: Sequence[Mapping[str, object]], **kw: object
) -> dict[str, object]:
    return {"language": language, "code": code, "tests": tests, **kw}


@pytest.mark.parametrize(("language", "code"), [("python", ECHO_SUM_PY), ("cpp", ECHO_SUM_CPP)])
def test_ac_with_per_test_time_and_memory(sandbox: Harness, language: str, code: str) -> None:
    r = sandbox.judge(code_case(language, code, SUM_TESTS))
    assert (r.verdict, r.passed, r.total, r.reward) == (Verdict.AC, 2, 2, 1.0), r
    for t in r.tests:
        assert t.verdict is Verdict.AC
        assert 0 < t.time_s < 1
        assert 0 < t.memory_mb < 64


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "print(int(input().split()[0]) * 3)\n"),
        (
            "cpp",
            '#include <cstdio>\nint main() { int a; scanf("%d", &a); printf("%d\\n", a * 3); }\n',
        ),
    ],
)
def test_wa_and_partial_credit(sandbox: Harness, language: str, code: str) -> None:
    tests = [{"stdin": "1 2\n", "stdout": "3\n"}, {"stdin": "2 2\n", "stdout": "4\n"}]
    r = sandbox.judge(code_case(language, code, tests))
    assert (r.verdict, r.passed, r.total, r.reward) == (Verdict.WA, 1, 2, 0.0), r
    assert [t.verdict for t in r.tests] == [Verdict.AC, Verdict.WA]


def test_partial_reward_option() -> None:
    from rlfleet.sandbox.judge import JudgeConfig

    h = Harness("local", workers=1, judge=JudgeConfig(partial_reward=True))
    try:
        tests = [
            {"stdin": "", "stdout": "1"},
            {"stdin": "", "stdout": "2"},
            {"stdin": "", "stdout": "1"},
        ]
        r = h.judge(code_case("python", "print(1)", tests))
        assert r.verdict is Verdict.WA
        assert r.reward == pytest.approx(2 / 3)
    finally:
        h.close()


def test_early_stop(sandbox: Harness) -> None:
    tests = [
        {"stdin": "", "stdout": "2"},
        {"stdin": "", "stdout": "1"},
        {"stdin": "", "stdout": "1"},
    ]
    r = sandbox.judge(code_case("python", "print(1)", tests, early_stop=True))
    assert (r.verdict, r.passed, r.total, len(r.tests)) == (Verdict.WA, 0, 3, 1)


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "while True:\n    pass\n"),
        ("cpp", "int main() { volatile long x = 0; while (1) x++; }\n"),
    ],
)
def test_tle(sandbox: Harness, language: str, code: str) -> None:
    r = sandbox.judge(code_case(language, code, [{"stdin": "", "stdout": ""}], time_limit_s=0.3))
    assert r.verdict is Verdict.TLE, r


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "b = bytearray(200 << 20)\nfor i in range(0, len(b), 4096):\n    b[i] = 1\n"),
        (
            "cpp",
            "#include <cstdlib>\nint main() { volatile char* p = (volatile char*)malloc(200 << 20);"
            " for (long i = 0; i < (200L << 20); i += 4096) p[i] = 1; return 0; }\n",
        ),
    ],
)
def test_mle(sandbox: Harness, language: str, code: str) -> None:
    r = sandbox.judge(code_case(language, code, [{"stdin": "", "stdout": ""}], memory_limit_mb=64))
    assert r.verdict is Verdict.MLE, r


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "raise ValueError('boom')\n"),
        ("python", "import sys\nsys.exit(3)\n"),
        ("cpp", "int main() { return 3; }\n"),
        ("cpp", "#include <cstdlib>\nint main() { abort(); }\n"),
        ("cpp", "int main() { volatile int* p = nullptr; return *p; }\n"),
    ],
)
def test_re(sandbox: Harness, language: str, code: str) -> None:
    r = sandbox.judge(code_case(language, code, [{"stdin": "", "stdout": ""}]))
    assert r.verdict is Verdict.RE, r


def test_re_message_is_the_traceback(sandbox: Harness) -> None:
    r = sandbox.judge(
        code_case("python", "raise ValueError('boom')\n", [{"stdin": "", "stdout": ""}])
    )
    assert "ValueError: boom" in r.message
    assert 'File "main.py", line 1' in r.message
    assert "zygote" not in r.message


@pytest.mark.parametrize(
    ("language", "code", "needle"),
    [
        ("python", "def f(:\n    pass\n", "SyntaxError"),
        ("python", "x = (" * 300 + ")" * 300 + "\n", "too many nested parentheses"),
        ("cpp", "int main() { return undefined_name; }\n", "undefined_name"),
    ],
)
def test_ce(sandbox: Harness, language: str, code: str, needle: str) -> None:
    r = sandbox.judge(code_case(language, code, [{"stdin": "", "stdout": ""}]))
    assert (r.verdict, r.passed, r.total, r.reward) == (Verdict.CE, 0, 1, 0.0), r
    assert needle in r.message


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "print('y' * (32 << 20))\n"),
        (
            "cpp",
            "#include <cstdio>\nint main() { for (long i = 0; i < (40L << 20); i++) putchar('y'); }\n",
        ),
    ],
)
def test_ole(sandbox: Harness, language: str, code: str) -> None:
    r = sandbox.judge(
        code_case(language, code, [{"stdin": "", "stdout": "y"}], memory_limit_mb=512)
    )
    assert r.verdict is Verdict.OLE, r


def test_se_is_retried_then_reported(sandbox: Harness) -> None:
    from rlfleet.sandbox.judge import Judge, JudgeConfig
    from rlfleet.sandbox.worker_handle import RunFacts, RunRequest

    calls: list[RunRequest] = []

    async def flaky(req: RunRequest) -> RunFacts:
        calls.append(req)
        if len(calls) <= 2:
            return RunFacts.failure("worker crashed")
        return await sandbox.pool.run(req)

    judge = Judge(flaky, JudgeConfig(se_retries=2))
    from rlfleet.sandbox.cases import parse_case

    case = parse_case(
        {
            "id": "se",
            "kind": "code",
            "language": "python",
            "code": "print(1)",
            "tests": [{"stdin": "", "stdout": "1"}],
        }
    )
    r = sandbox.call(judge.judge(case))  # type: ignore[arg-type]
    assert r.verdict is Verdict.AC  # two SEs on its run (which checks the syntax), retried
    calls.clear()

    async def broken(req: RunRequest) -> RunFacts:
        calls.append(req)
        return RunFacts.failure("worker crashed")

    r = sandbox.call(Judge(broken, JudgeConfig(se_retries=2)).judge(case))  # type: ignore[arg-type]
    assert (r.verdict, r.reward) == (Verdict.SE, 0.0)
    assert len(calls) == 3


def test_missing_toolchain_is_ours_not_the_programs(
    sandbox: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compiler that cannot be executed is a system error naming it, never a CE or RE."""
    import dataclasses

    from rlfleet.sandbox import languages
    from rlfleet.sandbox.worker_handle import RunLimits, RunRequest

    missing = "/usr/bin/rlfleet-no-such-compiler"
    facts = sandbox.call(
        sandbox.pool.run(RunRequest(kind="exec", argv=(missing, "-v"), limits=RunLimits()))
    )
    assert facts.system_error == f"cannot execute {missing}: No such file or directory"
    # A program that exits 73 itself (the failed-exec status) is still only an RE.
    r = sandbox.judge(code_case("cpp", "int main() { return 73; }\n", [{"stdout": ""}]))
    assert r.verdict is Verdict.RE, r

    cpp = languages.LANGUAGES["cpp"]
    broken = dataclasses.replace(cpp, compile_argv=(missing, *cpp.compile_argv[1:]))
    monkeypatch.setitem(languages.LANGUAGES, "cpp", broken)
    r = sandbox.judge(code_case("cpp", "int main() {}\n", [{"stdout": ""}]))
    assert r.verdict is Verdict.SE, r
    assert missing in r.message and "No such file" in r.message


# ------------------------------------------------------------------------ checkers


def test_exact_checker_whitespace_rules(sandbox: Harness) -> None:
    code = "print('a b  ')\nprint('c')\nprint()\nprint()\n"
    ok = sandbox.judge(code_case("python", code, [{"stdin": "", "stdout": "a b\nc"}]))
    assert ok.verdict is Verdict.AC
    case_sensitive = sandbox.judge(code_case("python", code, [{"stdin": "", "stdout": "A b\nc"}]))
    assert case_sensitive.verdict is Verdict.WA
    inner_space = sandbox.judge(code_case("python", code, [{"stdin": "", "stdout": "a  b\nc"}]))
    assert inner_space.verdict is Verdict.WA


def test_tokens_checker(sandbox: Harness) -> None:
    code = "print('1   2\\n3')"
    tests = [{"stdin": "", "stdout": "1 2 3"}]
    assert sandbox.judge(code_case("python", code, tests)).verdict is Verdict.WA
    r = sandbox.judge(code_case("python", code, tests, checker={"type": "tokens"}))
    assert r.verdict is Verdict.AC


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "print(1 / 3, 2.0000001)\n"),
        ("cpp", '#include <cstdio>\nint main() { printf("%.10f %.7f\\n", 1.0 / 3, 2.0000001); }\n'),
    ],
)
def test_float_checker(sandbox: Harness, language: str, code: str) -> None:
    tests = [{"stdin": "", "stdout": "0.333333 2"}]
    r = sandbox.judge(code_case(language, code, tests, checker={"type": "float", "abs_tol": 1e-5}))
    assert r.verdict is Verdict.AC, r
    strict = {"type": "float", "abs_tol": 1e-9, "rel_tol": 1e-9}
    assert sandbox.judge(code_case(language, code, tests, checker=strict)).verdict is Verdict.WA


def test_custom_checker(sandbox: Harness) -> None:
    checker = (
        "import json, sys\n"
        "d = json.load(sys.stdin)\n"
        "a, b = map(int, d['input'].split())\n"
        "print('AC' if int(d['output']) in (a + b, -(a + b)) else 'WA')\n"
    )
    tests = [{"stdin": "2 3\n", "stdout": "5\n"}]
    ok = sandbox.judge(
        code_case("python", "print(-5)", tests, checker={"type": "custom", "code": checker})
    )
    assert ok.verdict is Verdict.AC, ok
    bad = sandbox.judge(
        code_case("python", "print(4)", tests, checker={"type": "custom", "code": checker})
    )
    assert bad.verdict is Verdict.WA
    broken = sandbox.judge(
        code_case(
            "python", "print(5)", tests, checker={"type": "custom", "code": "raise SystemExit(1)"}
        )
    )
    assert broken.verdict is Verdict.SE


# ------------------------------------------------------------------ function calls


def fn_case(code: str, tests: Sequence[Mapping[str, object]], **kw: object) -> dict[str, object]:
    return {"language": "python", "fn_name": "solve", "code": code, "tests": tests, **kw}


def test_call_tuples_equal_lists_and_kwargs(sandbox: Harness) -> None:
    code = "def solve(a, b=0, *, scale=1):\n    return (a * scale, [b, {'k': (1, 2)}])\n"
    tests = [{"args": [2], "kwargs": {"b": 3, "scale": 5}, "expected": [10, [3, {"k": [1, 2]}]]}]
    r = sandbox.judge(fn_case(code, tests))
    assert r.verdict is Verdict.AC, r


def test_call_solution_class_method(sandbox: Harness) -> None:
    code = "class Solution:\n    def solve(self, s):\n        return s[::-1]\n"
    r = sandbox.judge(
        fn_case(code, [{"args": ["abc"], "expected": "cba"}, {"args": ["x"], "expected": "y"}])
    )
    assert (r.verdict, r.passed) == (Verdict.WA, 1), r


def test_call_prints_do_not_corrupt_result(sandbox: Harness) -> None:
    code = "def solve(x):\n    print('debug', x)\n    return x + 1\n"
    r = sandbox.judge(fn_case(code, [{"args": [1], "expected": 2}]))
    assert r.verdict is Verdict.AC, r


def test_call_type_strictness(sandbox: Harness) -> None:
    assert (
        sandbox.judge(
            fn_case("def solve():\n    return 1.0\n", [{"args": [], "expected": 1}])
        ).verdict
        is Verdict.AC
    )
    assert (
        sandbox.judge(
            fn_case("def solve():\n    return True\n", [{"args": [], "expected": 1}])
        ).verdict
        is Verdict.WA
    )
    assert (
        sandbox.judge(
            fn_case("def solve():\n    return '1'\n", [{"args": [], "expected": 1}])
        ).verdict
        is Verdict.WA
    )
    r = sandbox.judge(
        fn_case(
            "def solve():\n    return 0.1 + 0.2\n",
            [{"args": [], "expected": 0.3}],
            checker={"type": "float"},
        )
    )
    assert r.verdict is Verdict.AC


def test_call_missing_function_and_errors(sandbox: Harness) -> None:
    r = sandbox.judge(fn_case("def other():\n    pass\n", [{"args": [], "expected": None}]))
    assert r.verdict is Verdict.RE
    assert "solve" in r.message
    r = sandbox.judge(
        fn_case("def solve():\n    return 1 // 0\n", [{"args": [], "expected": None}])
    )
    assert r.verdict is Verdict.RE
    r = sandbox.judge(
        fn_case(
            "def solve():\n    while True: pass\n",
            [{"args": [], "expected": None}],
            time_limit_s=0.3,
        )
    )
    assert r.verdict is Verdict.TLE
    r = sandbox.judge(
        fn_case(
            "def solve():\n    return bytearray(300 << 20)\n",
            [{"args": [], "expected": None}],
            memory_limit_mb=64,
        )
    )
    assert r.verdict is Verdict.MLE


def test_non_daemon_threads_finish_before_exit(sandbox: Harness) -> None:
    code = (
        "import threading, time\n"
        "def late():\n"
        "    time.sleep(0.1)\n"
        "    print('late')\n"
        "threading.Thread(target=late).start()\n"
        "print('early')\n"
    )
    r = sandbox.judge(code_case("python", code, [{"stdin": "", "stdout": "early\nlate\n"}]))
    assert r.verdict is Verdict.AC, r


def _counting(sandbox: Harness) -> tuple[list[Any], Any]:
    from rlfleet.sandbox.judge import Judge
    from rlfleet.sandbox.worker_handle import RunFacts, RunRequest

    calls: list[RunRequest] = []

    async def run(req: RunRequest) -> RunFacts:
        calls.append(req)
        return await sandbox.pool.run(req)

    return calls, Judge(run)


def _parsed(code: str, tests: Sequence[Mapping[str, object]], **kw: object) -> Any:
    from rlfleet.sandbox.cases import parse_case

    return parse_case({"id": "c", "kind": "code", **code_case("python", code, tests, **kw)})


def test_a_python_case_run_in_turn_checks_its_syntax_in_its_first_run(sandbox: Harness) -> None:
    calls, judge = _counting(sandbox)
    one = [{"stdin": "1 2\n", "stdout": "3\n"}]
    r = sandbox.call(judge.judge(_parsed(ECHO_SUM_PY, one)))
    assert r.verdict is Verdict.AC, r
    assert [(c.mode, c.report_syntax) for c in calls] == [("stdio", True)]  # no run of its own

    calls.clear()
    r = sandbox.call(judge.judge(_parsed("def f(:\n", one)))
    assert (r.verdict, r.passed, r.total) == (Verdict.CE, 0, 1), r
    assert "SyntaxError" in r.message and not r.tests
    assert len(calls) == 1
    calls.clear()
    again = sandbox.call(judge.judge(_parsed("def f(:\n", one)))  # the outcome is cached
    assert (again.verdict, again.message, calls) == (Verdict.CE, r.message, [])

    # Tests run one after the other (early_stop): the first run checks; a CE stops there.
    r = sandbox.call(judge.judge(_parsed("print(", SUM_TESTS, early_stop=True)))
    assert r.verdict is Verdict.CE and len(calls) == 1, r
    calls.clear()
    r = sandbox.call(judge.judge(_parsed(ECHO_SUM_PY + "\n", SUM_TESTS, early_stop=True)))
    assert r.verdict is Verdict.AC and [c.mode for c in calls] == ["stdio", "stdio"], r

    # Tests run side by side: a syntax check first, as for a compiled language.
    calls.clear()
    r = sandbox.call(judge.judge(_parsed(ECHO_SUM_PY + "\n\n", SUM_TESTS)))
    assert r.verdict is Verdict.AC, r
    assert [c.mode for c in calls] == ["syntax", "stdio", "stdio"]
    assert not any(c.report_syntax for c in calls)


@pytest.mark.parametrize(
    "code",
    [
        # Everything a program can do to look like a source that did not compile.
        "import sys\nsys.stderr.write('SyntaxError: invalid syntax\\n')\nsys.exit(3)\n",
        "raise SyntaxError('invalid syntax')\n",
        "exec('def f(:')\n",
        "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'S')\n"
        "    except OSError:\n        pass\nos._exit(3)\n",
    ],
)
def test_a_program_cannot_pass_for_a_syntax_error(sandbox: Harness, code: str) -> None:
    calls, judge = _counting(sandbox)
    r = sandbox.call(judge.judge(_parsed(code, [{"stdin": "", "stdout": "x"}])))
    assert calls and all(c.report_syntax for c in calls)
    assert r.verdict is Verdict.RE, r  # its own failure, not a CE


def test_a_source_too_deep_to_compile_is_ce_in_either_check(sandbox: Harness) -> None:
    # The compiler's own recursion limit, not a SyntaxError: CE whichever run checks it.
    deep = "x = " + "-" * 200_000 + "1\n"
    for tests in ([{"stdin": "", "stdout": ""}], [{"stdin": "", "stdout": ""}] * 2):
        r = sandbox.judge(code_case("python", deep, tests))
        assert r.verdict is Verdict.CE, r
