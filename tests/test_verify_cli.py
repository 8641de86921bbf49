"""The `rlfleet verify` contract: one result per line, input order, clear errors, exit 2 on
invalid lines, nothing left running afterwards (also when interrupted)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from harness import nobody_processes, wait_for_sandboxed

from rlfleet.sandbox import cgroups
from rlfleet.sandbox.batch import CONCURRENCY_PER_WORKER, run_verify
from rlfleet.sandbox.engine import Engine, EngineConfig
from rlfleet.sandbox.records import Case, CaseResult, Verdict
from rlfleet.sandbox.worker_pool import PoolConfig

RLFLEET = [sys.executable, "-m", "rlfleet.cli"]


def write_cases(path: Path, lines: Sequence[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def code(case_id: str, program: str, stdout: str, **kw: object) -> dict[str, object]:
    return {
        "id": case_id,
        "kind": "code",
        "language": "python",
        "code": program,
        "tests": [{"stdin": "", "stdout": stdout}],
        **kw,
    }


def run_cli(*args: str) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, pid) of one `rlfleet` run."""
    proc = subprocess.Popen(
        [*RLFLEET, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err, proc.pid


def leftover_cgroups(pid: int) -> list[Path]:
    h = cgroups.detect()
    return [p for p in cgroups.leftover_bases(h) if p.name.startswith(f"{pid}-")]


def test_results_in_input_order_with_errors(tmp_path: Path) -> None:
    cases = write_cases(
        tmp_path / "cases.jsonl",
        [
            code("slow", "import time\ntime.sleep(0.5)\nprint(1)", "1"),
            code("fast", "print(2)", "2"),
            "{not json",
            {"id": "bad-lang", "kind": "code", "language": "cobol", "code": "", "tests": []},
            {"kind": "code"},
            code("wa", "print(3)", "4"),
            {
                "id": "cpp",
                "kind": "code",
                "language": "cpp",
                "code": '#include <cstdio>\nint main() { puts("5"); }',
                "tests": [{"stdout": "5"}],
            },
        ],
    )
    rc, stdout, stderr, pid = run_cli("verify", str(cases), "--workers", "2")
    assert rc == 2, stderr
    out = [json.loads(line) for line in stdout.splitlines()]
    assert [o.get("id", o.get("line")) for o in out] == [
        "slow",
        "fast",
        3,
        "bad-lang",
        5,
        "wa",
        "cpp",
    ]
    assert out[0]["verdict"] == "AC" and out[1]["verdict"] == "AC" and out[5]["verdict"] == "WA"
    assert out[6] == {
        "id": "cpp",
        "verdict": "AC",
        "passed": 1,
        "total": 1,
        "reward": 1.0,
        "tests": out[6]["tests"],
    }
    assert set(out[6]["tests"][0]) == {"verdict", "time_s", "memory_mb"}
    assert "invalid JSON" in out[2]["error"]
    assert out[3]["error"].startswith("language: unknown 'cobol'")
    assert out[4] == {"line": 5, "error": "id: missing"}
    assert leftover_cgroups(pid) == []
    assert nobody_processes() == []


def test_test_code_cases(tmp_path: Path) -> None:
    add = "def add(a, b):\n    return a + b\n"
    unittest_code = (
        "import unittest\n"
        "class T(unittest.TestCase):\n"
        "    def test_a(self):\n        self.assertEqual(add(1, 1), 2)\n"
        "    def test_b(self):\n        self.assertEqual(add(1, 1), 3)\n"
    )
    cases = write_cases(
        tmp_path / "cases.jsonl",
        [
            {
                "id": "humaneval",
                "kind": "code",
                "language": "python",
                "code": add,
                "tests": [
                    {
                        "test_code": "def check(candidate):\n    assert candidate(2, 3) == 5\n\ncheck(add)\n"
                    }
                ],
            },
            {
                "id": "mbpp",
                "kind": "code",
                "language": "python",
                "code": add,
                "tests": [
                    {"test_code": "assert add(1, 2) == 3"},
                    {"test_code": "assert add(1, 2) == 4"},
                ],
            },
            {
                "id": "unittest",
                "kind": "code",
                "language": "python",
                "code": add,
                "tests": [{"test_code": unittest_code}],
            },
            {
                "id": "bad",
                "kind": "code",
                "language": "python",
                "code": add,
                "tests": [{"test_code": "assert ("}],
            },
        ],
    )
    rc, stdout, stderr, pid = run_cli("verify", str(cases))
    assert rc == 2, stderr
    out = {o["id"]: o for o in map(json.loads, stdout.splitlines())}
    assert (out["humaneval"]["verdict"], out["humaneval"]["total"]) == ("AC", 1)
    assert (out["mbpp"]["verdict"], out["mbpp"]["passed"], out["mbpp"]["total"]) == ("WA", 1, 2)
    assert [t["verdict"] for t in out["unittest"]["tests"]] == ["AC", "WA"]
    assert out["bad"]["error"].startswith("tests[0].test_code: syntax error")
    assert leftover_cgroups(pid) == []


def test_all_valid_exits_zero(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "ok.jsonl", [code("a", "print(1)", "1")])
    proc = subprocess.run(
        [*RLFLEET, "verify", str(cases)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verdict"] == "AC"


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*RLFLEET, "verify", str(tmp_path / "nope.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "no such file" in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_leaves_nothing_running(tmp_path: Path, sig: signal.Signals) -> None:
    sleepers = [
        code(f"s{i}", "import os, time\nif os.fork() == 0:\n    os.setsid()\ntime.sleep(30)\n", "")
        for i in range(6)
    ]
    cases = write_cases(tmp_path / "sleep.jsonl", sleepers)
    proc = subprocess.Popen(
        [*RLFLEET, "verify", str(cases), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for_sandboxed(30), "the sleepers never started"
        os.kill(proc.pid, sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "rlfleet verify: interrupted"
    deadline = time.monotonic() + 5
    while nobody_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert nobody_processes() == []
    assert leftover_cgroups(proc.pid) == []


def test_math_cases_carry_the_extracted_answer(tmp_path: Path) -> None:
    cases = write_cases(
        tmp_path / "math.jsonl",
        [
            {
                "id": "m1",
                "kind": "math",
                "completion": "<answer>\\boxed{\\frac{1}{2}}</answer>",
                "gold": "0.5",
            },
            {"id": "m2", "kind": "math", "completion": "\\boxed{1} or \\boxed{2}", "gold": "2"},
        ],
    )
    code, stdout, stderr, _ = run_cli("verify", str(cases))
    assert code == 0, stderr
    m1, m2 = (json.loads(line) for line in stdout.splitlines())
    assert (m1["verdict"], m1["reward"], m1["extracted"]) == ("AC", 1.0, "\\frac{1}{2}")
    assert (m2["verdict"], m2["reward"]) == ("WA", 0.0)


class Recording:
    """The real engine, keeping every result (the JSON output has no wall times)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.results: list[CaseResult] = []

    async def verify(self, case: Case) -> CaseResult:
        result = await self.engine.verify(case)
        self.results.append(result)
        return result


async def test_slow_cases_do_not_hold_fast_ones_back(tmp_path: Path, require_root: None) -> None:
    # Six loops cut at 1 s of CPU, ten lines apart (more than the default concurrency of 8:
    # in-order dispatch would run them one after the other), among 60 trivial cases.
    lines = [
        code(f"loop{i}", "while True: pass", "", time_limit_s=1)
        if i % 11 == 0
        else code(f"fast{i}", "print(1)", "1")
        for i in range(66)
    ]
    cases = write_cases(tmp_path / "mix.jsonl", lines)
    engine = await Engine.start(EngineConfig(pool=PoolConfig(workers=2)))
    try:
        recording = Recording(engine)
        out = io.StringIO()
        t0 = time.monotonic()
        with cases.open("rb") as stream:
            rc = await run_verify(recording, stream, out, CONCURRENCY_PER_WORKER * 2)
        elapsed = time.monotonic() - t0
    finally:
        await engine.close()
    assert rc == 0
    verdicts = [json.loads(line)["verdict"] for line in out.getvalue().splitlines()]
    assert verdicts == ["TLE" if i % 11 == 0 else "AC" for i in range(66)]
    loops = [t.wall_s for r in recording.results if r.verdict == Verdict.TLE for t in r.tests]
    assert len(loops) == 6
    # What two workers need for the loops, measured in this run (their wall times grow with
    # the machine's load, and so does the bound). The allowance covers the 60 trivial cases'
    # own time on the workers (about 0.25 s) and the start and kill of six sandboxed runs.
    # In-order dispatch takes about twice the ideal here.
    ideal = sum(loops) / 2
    assert elapsed < 1.3 * ideal + 0.5, (elapsed, ideal)
