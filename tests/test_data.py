"""Loading training problems: each public format into the verifier's records, errors by line
and field.

The records below are shaped as the public data sets' rows are (field names and encodings as
published on the Hugging Face hub): codeparrot/apps and BAAI/TACO (``input_output`` a JSON
string), deepmind/code_contests (``public_tests`` objects of lists, ``time_limit``
``{seconds, nanos}``), livecodebench/code_generation_lite (test cases and ``metadata`` JSON
strings, private tests packed as base64(zlib(pickle(json)))), hendrycks/competition_math and
HuggingFaceH4/MATH-500, openai/gsm8k (``#### N``).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import pickle
import zlib
from pathlib import Path
from typing import Any

import pytest

from rlfleet.learner.data import (
    FORMATS,
    DataError,
    LoadConfig,
    RecordError,
    load_tasks,
    parse_record,
    recognise,
)
from rlfleet.sandbox.records import CallTest, CheckerKind, CodeCase, MathCase, StdioTest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "data"

APPS_STDIO = {
    "problem_id": 4,
    "question": "Print the sum of the two numbers.",
    "solutions": json.dumps(["print(sum(map(int, input().split())))"]),
    "input_output": json.dumps({"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]}),
    "difficulty": "interview",
    "url": "https://example.invalid/problem",
    "starter_code": "",
}
APPS_CALL = {
    "problem_id": 5,
    "question": "Return the sum of a and b.",
    "solutions": json.dumps(["def add(a, b):\n    return a + b\n"]),
    "input_output": json.dumps(
        {"fn_name": "add", "inputs": [[1, 2], [[1], [2]]], "outputs": [[3], [[1, 2]]]}
    ),
    "difficulty": "introductory",
    "url": "",
    "starter_code": "def add(a, b):\n",
}
# TACO has no problem_id, and some of its inputs/outputs are lists of lines.
TACO = {
    "question": "Echo the input.",
    "solutions": json.dumps(["print(input())"]),
    "starter_code": "",
    "input_output": json.dumps({"inputs": [["a", "b"]], "outputs": [["a", "b"]]}),
    "difficulty": "EASY",
    "raw_tags": "[]",
    "name": None,
    "source": "codechef",
    "tags": "[]",
    "skill_types": "[]",
    "url": "",
    "Expected Auxiliary Space": None,
    "time_limit": None,
    "date": None,
    "picture_num": None,
    "memory_limit": None,
    "Expected Time Complexity": None,
}
CODECONTESTS = {
    "name": "1548_A. Web of Lies",
    "description": "Count the nobles that survive.",
    "public_tests": {"input": ["4 3\n"], "output": ["2\n"]},
    "private_tests": {"input": ["1 0\n", "2 1\n"], "output": ["1\n", "1\n"]},
    "generated_tests": {"input": ["9 9\n"], "output": ["0\n"]},
    "source": 2,
    "difficulty": 7,
    "solutions": {"language": [3], "solution": ["print(1)"]},
    "cf_contest_id": 1548,
    "time_limit": {"seconds": 1, "nanos": 500000000},
    "memory_limit_bytes": 268435456,
}


def packed(cases: list[dict[str, str]]) -> str:
    """LiveCodeBench's packing of its private tests."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


LCB_FUNCTIONAL = {
    "question_title": "Minimum Sum",
    "question_content": "Return the minimum sum.",
    "platform": "leetcode",
    "question_id": "2811",
    "contest_id": "weekly-contest-357",
    "contest_date": "2023-08-06T00:00:00",
    "starter_code": "class Solution:\n    def minimumSum(self, n: int, k: int) -> int:\n        ",
    "difficulty": "medium",
    "public_test_cases": json.dumps([{"input": "5\n4", "output": "18", "testtype": "functional"}]),
    "private_test_cases": packed([{"input": "2\n6", "output": "3", "testtype": "functional"}]),
    "metadata": json.dumps({"func_name": "minimumSum"}),
}
LCB_STDIN = {
    "question_title": "Echo",
    "question_content": "Print N.",
    "platform": "atcoder",
    "question_id": "abc300_a",
    "contest_id": "abc300",
    "contest_date": "2023-04-29T00:00:00",
    "starter_code": "",
    "difficulty": "easy",
    "public_test_cases": json.dumps([{"input": "3\n", "output": "3\n", "testtype": "stdin"}]),
    "private_test_cases": json.dumps([{"input": "5\n", "output": "5\n", "testtype": "stdin"}]),
    "metadata": "{}",
}
MATH = {
    "problem": "What is $1+1$?",
    "level": "Level 1",
    "type": "Prealgebra",
    "solution": "We have $1+1=\\boxed{2}$.",
}
MATH500 = {
    "problem": "Simplify $\\frac{2}{4}$.",
    "solution": "It is $\\boxed{\\frac12}$.",
    "answer": "\\frac{1}{2}",
    "subject": "Prealgebra",
    "level": 1,
    "unique_id": "test/prealgebra/1.json",
}
GSM8K = {
    "question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
    "answer": "In May she sold 48/2 = <<48/2=24>>24.\nIn all 48+24 = <<48+24=72>>72.\n#### 1,072",
}


def code(task_verification: Any) -> CodeCase:
    assert isinstance(task_verification, CodeCase)
    return task_verification


def test_apps_stdio() -> None:
    task = parse_record(APPS_STDIO, "f:1")
    v = code(task.verification)
    assert (task.id, task.task_type, task.source) == ("4", "code", "apps")
    assert task.prompt == "Print the sum of the two numbers."
    assert v.tests == (
        StdioTest(stdin="1 2\n", stdout="3\n"),
        StdioTest(stdin="3 4\n", stdout="7\n"),
    )
    assert (v.fn_name, v.code, v.language, v.checker.kind) == (
        None,
        "",
        "python",
        CheckerKind.TOKENS,
    )


def test_apps_call_unwraps_the_expected_value() -> None:
    task = parse_record(APPS_CALL, "f:1")
    v = code(task.verification)
    assert v.fn_name == "add" and task.starter_code == "def add(a, b):\n"
    assert v.tests == (
        CallTest(args=[1, 2], expected=3),
        CallTest(args=[[1], [2]], expected=[1, 2]),
    )


def test_taco_lines_and_fallback_id() -> None:
    task = parse_record(TACO, "taco:7")
    assert task.id == "taco:7" and task.source == "apps"
    assert code(task.verification).tests == (StdioTest(stdin="a\nb\n", stdout="a\nb\n"),)


def test_codecontests_public_then_private_with_limits() -> None:
    task = parse_record(CODECONTESTS, "f:1")
    v = code(task.verification)
    assert task.id == "1548_A. Web of Lies" and task.source == "codecontests"
    assert [t.stdin for t in v.tests if isinstance(t, StdioTest)] == ["4 3\n", "1 0\n", "2 1\n"]
    assert len(v.tests) == 3  # generated tests left out
    assert (v.time_limit_s, v.memory_limit_mb) == (1.5, 256)
    capped = parse_record(CODECONTESTS, "f:1", LoadConfig(max_tests=1))
    assert len(code(capped.verification).tests) == 1


def test_livecodebench_functional_with_packed_private_tests() -> None:
    task = parse_record(LCB_FUNCTIONAL, "f:1")
    v = code(task.verification)
    assert (task.id, task.source, v.fn_name) == ("2811", "livecodebench", "minimumSum")
    assert v.tests == (CallTest(args=[5, 4], expected=18), CallTest(args=[2, 6], expected=3))
    assert task.starter_code.startswith("class Solution:")


def test_livecodebench_stdin() -> None:
    v = code(parse_record(LCB_STDIN, "f:1").verification)
    assert v.fn_name is None
    assert v.tests == (StdioTest(stdin="3\n", stdout="3\n"), StdioTest(stdin="5\n", stdout="5\n"))


def test_livecodebench_packed_tests_refuse_pickled_objects() -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (print, ("ran",))

    bad = dict(
        LCB_STDIN, private_test_cases=base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    )
    with pytest.raises(RecordError, match="private_test_cases: neither JSON nor packed JSON"):
        parse_record(bad, "f:1")


def test_math_gold_from_the_boxed_solution_or_the_answer_field() -> None:
    task = parse_record(MATH, "math:3")
    assert (task.id, task.task_type, task.source) == ("math:3", "math", "math")
    assert task.verification == MathCase(id="", completion="", gold="2")
    task500 = parse_record(MATH500, "f:1")
    assert task500.id == "test/prealgebra/1.json"
    assert task500.verification == MathCase(id="", completion="", gold="\\frac{1}{2}")


def test_gsm8k_gold_after_the_marker() -> None:
    task = parse_record(GSM8K, "gsm:1")
    assert (task.task_type, task.source) == ("math", "gsm8k")
    assert task.verification == MathCase(id="", completion="", gold="1072")


def test_recognisers_pick_one_format_each() -> None:
    found = {
        name: recognise(rec).name
        for name, rec in (
            ("apps", APPS_STDIO),
            ("taco", TACO),
            ("codecontests", CODECONTESTS),
            ("livecodebench", LCB_FUNCTIONAL),
            ("math", MATH),
            ("math500", MATH500),
            ("gsm8k", GSM8K),
        )
    }
    assert found == {
        "apps": "apps",
        "taco": "apps",
        "codecontests": "codecontests",
        "livecodebench": "livecodebench",
        "math": "math",
        "math500": "math",
        "gsm8k": "gsm8k",
    }
    with pytest.raises(RecordError, match="could be apps and gsm8k; give the format"):
        recognise(dict(APPS_STDIO, answer="#### 1"))
    with pytest.raises(RecordError, match="no known format"):
        recognise({"prompt": "x"})
    # Given explicitly, the format decides.
    task = parse_record(dict(APPS_STDIO, answer="#### 1"), "f:1", LoadConfig(format="gsm8k"))
    assert task.source == "gsm8k"


def test_unknown_format_name() -> None:
    with pytest.raises(ValueError, match="format: unknown 'csv'"):
        LoadConfig(format="csv")
    assert set(FORMATS) == {"apps", "codecontests", "livecodebench", "math", "gsm8k"}


def write(path: Path, *records: Any) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (dict(APPS_STDIO, input_output="{not json"), r"f\.jsonl:3: input_output: not valid JSON"),
        (
            dict(APPS_STDIO, input_output=json.dumps({"inputs": ["1"], "outputs": []})),
            r"f\.jsonl:3: input_output: 1 inputs but 0 outputs",
        ),
        (dict(GSM8K, answer="no marker"), r"f\.jsonl:3: answer: no '#### N' final answer"),
        (dict(MATH, solution="no box"), r"f\.jsonl:3: solution: no \\boxed\{\} answer"),
        (
            {k: v for k, v in MATH.items() if k != "problem"} | {"problem": 3},
            r"f\.jsonl:3: problem: expected a string",
        ),
        (
            dict(CODECONTESTS, public_tests={"input": [], "output": []}, private_tests=None),
            r"f\.jsonl:3: tests: none found",
        ),
        (
            dict(LCB_FUNCTIONAL, metadata="{}"),
            r"f\.jsonl:3: metadata\.func_name: missing for functional tests",
        ),
        ("[1, 2]", r"f\.jsonl:3: record: expected a JSON object"),
        ("{oops", r"f\.jsonl:3: not valid JSON"),
    ],
)
def test_bad_records_name_the_line_and_field(tmp_path: Path, bad: Any, message: str) -> None:
    path = write(tmp_path / "f.jsonl", MATH, "", bad)  # a blank line still counts as a line
    with pytest.raises(DataError, match=message):
        load_tasks(path)


def test_ids_must_be_unique(tmp_path: Path) -> None:
    path = write(tmp_path / "f.jsonl", APPS_STDIO, APPS_STDIO)
    with pytest.raises(DataError, match=r"f\.jsonl:2: id '4' already used at .*f\.jsonl:1"):
        load_tasks(path)


def test_fallback_ids_are_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "g.jsonl", GSM8K, GSM8K)
    assert [t.id for t in load_tasks(path)] == ["g:1", "g:2"]


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown file type"):
        load_tasks(tmp_path / "f.csv")
    with pytest.raises(DataError, match="no such file"):
        load_tasks(tmp_path / "f.jsonl")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow installed")
def test_parquet_without_pyarrow_names_what_to_install(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"reading parquet needs pyarrow \(pip install pyarrow\)"):
        load_tasks(path)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_shipped_examples_load_in_their_format(name: str) -> None:
    tasks = load_tasks(EXAMPLES / f"{name}.jsonl")
    assert len(tasks) >= 2
    assert {t.source for t in tasks} == {name}
    assert load_tasks(EXAMPLES / f"{name}.jsonl", LoadConfig(format=name)) == tasks


def reference_solution(record: dict[str, Any]) -> str:
    """The first reference solution, where each data set keeps it."""
    solutions = record["solutions"] if "solutions" in record else [record["solution"]]
    if isinstance(solutions, str):
        solutions = json.loads(solutions)
    if isinstance(solutions, dict):
        solutions = solutions["solution"]
    return str(solutions[0])


@pytest.mark.timeout(120)
async def test_shipped_code_examples_pass_with_their_solutions(require_root: None) -> None:
    """Through the real verifier engine: the tests as loaded accept each example's reference
    solution (so the conversion of every code format is right)."""
    from rlfleet.sandbox.engine import Engine, EngineConfig
    from rlfleet.sandbox.records import Verdict
    from rlfleet.sandbox.worker_pool import PoolConfig

    engine = await Engine.start(EngineConfig(pool=PoolConfig(workers=2)))
    try:
        for name in ("apps", "codecontests", "livecodebench"):
            path = EXAMPLES / f"{name}.jsonl"
            records = [json.loads(line) for line in path.read_text().splitlines()]
            for record, task in zip(records, load_tasks(path), strict=True):
                case = task.case_for(reference_solution(record), task.id)
                result = await engine.verify(case)
                assert result.verdict is Verdict.AC, (name, task.id, result.message)
    finally:
        await engine.close()


def test_several_files_load_in_order_and_an_id_in_two_is_an_error(tmp_path: Path) -> None:
    math = tmp_path / "m.jsonl"
    math.write_text('{"id": "a", "question": "1+1?", "answer": "#### 2"}\n')
    code = tmp_path / "c.jsonl"
    code.write_text(
        '{"problem_id": "b", "question": "echo", '
        '"input_output": "{\\"inputs\\": [\\"1\\\\n\\"], \\"outputs\\": [\\"1\\\\n\\"]}"}\n'
    )
    tasks = load_tasks((math, code))
    assert [(t.id, t.task_type) for t in tasks] == [("a", "math"), ("b", "code")]
    again = tmp_path / "again.jsonl"
    again.write_text('{"id": "a", "question": "2+2?", "answer": "#### 4"}\n')
    with pytest.raises(DataError, match=r"again.jsonl: id 'a' already used in .*m.jsonl"):
        load_tasks([math, again])
