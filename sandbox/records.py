"""Typed records passed between the verifier's stages.

A case arrives (from the CLI's JSONL or from gRPC), is validated into one of the
``*Case`` records below, judged, and leaves as a ``CaseResult``. Nothing else crosses
stage boundaries: no dicts of parallel lists.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Verdict(enum.StrEnum):
    """Outcome of one test, or of a whole case (the first non-AC test's verdict)."""

    AC = "AC"  # accepted
    WA = "WA"  # wrong answer
    TLE = "TLE"  # CPU-time or wall-time limit exceeded
    MLE = "MLE"  # memory limit exceeded (the cgroup's OOM killer fired)
    RE = "RE"  # runtime error: signal, non-zero exit, uncaught exception
    CE = "CE"  # compile error: compiler failed, compile timeout, Python syntax error
    OLE = "OLE"  # output limit exceeded
    SE = "SE"  # system error: ours, retried, never charged to the program


class CheckerKind(enum.StrEnum):
    EXACT = "exact"
    TOKENS = "tokens"
    FLOAT = "float"
    CUSTOM = "custom"


@dataclass(frozen=True, kw_only=True)
class CheckerSpec:
    """How a program's output is compared with the expected one (always outside the sandbox)."""

    kind: CheckerKind = CheckerKind.EXACT
    abs_tol: float = 1e-6
    """Absolute tolerance for ``float``."""
    rel_tol: float = 1e-6
    """Relative tolerance for ``float``."""
    custom_code: str = ""
    """For ``custom``: a Python program run sandboxed with input, expected and actual output."""


@dataclass(frozen=True, kw_only=True)
class StdioTest:
    """A stdin/stdout test (APPS, TACO, CodeContests)."""

    stdin: str
    stdout: str


@dataclass(frozen=True, kw_only=True)
class CallTest:
    """A function-call test (LiveCodeBench, APPS ``fn_name``)."""

    args: list[Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    expected: Any = None


@dataclass(frozen=True, kw_only=True)
class CodeTest:
    """Test code run against the program: HumanEval's ``check(candidate)``, MBPP's asserts,
    unittest classes. It passes when it runs to its end without an exception."""

    test_code: str
    methods: tuple[str, ...] = ()
    """The unittest methods it defines (``Class.method``), each run as a test of its own;
    empty when the code is one test."""

    @property
    def units(self) -> tuple[str, ...]:
        """What each run of this item runs: a method, or ``""`` for the whole code."""
        return self.methods or ("",)


@dataclass(frozen=True, kw_only=True)
class CodeCase:
    id: str
    language: str
    code: str
    tests: tuple[StdioTest, ...] | tuple[CallTest, ...] | tuple[CodeTest, ...]
    fn_name: str | None = None
    time_limit_s: float = 2.0
    memory_limit_mb: int = 256
    checker: CheckerSpec = CheckerSpec()
    early_stop: bool = False

    @property
    def is_call(self) -> bool:
        return self.fn_name is not None

    @property
    def test_count(self) -> int:
        """Tests as results count them: each unittest method of a test-code item is one."""
        return sum(len(t.units) if isinstance(t, CodeTest) else 1 for t in self.tests)


@dataclass(frozen=True, kw_only=True)
class MathCase:
    id: str
    completion: str
    gold: str
    extraction: str | None = None
    """How the answer is found ("strict" or "prose", docs/math.md); None: the server's
    default."""


Case = CodeCase | MathCase


@dataclass(frozen=True, kw_only=True)
class TestResult:
    verdict: Verdict
    time_s: float
    """CPU time (user + system) the program used."""
    memory_mb: float
    """Peak memory charged to the run's cgroup."""
    wall_s: float = 0.0
    message: str = ""
    """Truncated stderr or the reason for the verdict."""


@dataclass(frozen=True, kw_only=True)
class CaseResult:
    id: str
    verdict: Verdict
    passed: int
    total: int
    reward: float
    tests: tuple[TestResult, ...] = ()
    message: str = ""
    """Compiler output on CE, first failing test's message otherwise (truncated)."""
    extracted: str | None = None
    """Math cases only: the answer taken from the completion."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "verdict": self.verdict.value,
            "passed": self.passed,
            "total": self.total,
            "reward": self.reward,
            "tests": [
                {
                    "verdict": t.verdict.value,
                    "time_s": round(t.time_s, 4),
                    "memory_mb": round(t.memory_mb, 2),
                }
                for t in self.tests
            ],
        }
        if self.extracted is not None:
            out["extracted"] = self.extracted
        if self.message:
            out["message"] = self.message
        return out
