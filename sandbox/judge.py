"""Judge a code submission: compile (or syntax-check) once, run every test, decide verdicts.

A Python case whose tests run one at a time checks its syntax in its first run instead
(``_checks_syntax_in_run``): one run fewer per submission.

Verdicts are decided here, from the facts the worker measured, with the expected output in
this process only. Order of precedence follows what was actually hit: our own failure (SE)
first, then the output cap (OLE: a program stuck writing past it may also run out of time
or memory), the kernel's OOM kill (MLE), the time limits (TLE), an abnormal exit (RE), and
only for a clean exit the comparison (AC/WA).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rlfleet.sandbox import checkers
from rlfleet.sandbox.languages import Language, SourceError, get_language
from rlfleet.sandbox.records import (
    CallTest,
    CaseResult,
    CheckerKind,
    CodeCase,
    CodeTest,
    StdioTest,
    TestResult,
    Verdict,
)
from rlfleet.sandbox.worker import testwire
from rlfleet.sandbox.worker_handle import RunFacts, RunLimits, RunRequest

RunFn = Callable[[RunRequest], Awaitable[RunFacts]]
SYNTAX_ERROR_EXIT = 3  # the worker's syntax-check mode exits 3 on a SyntaxError
APPROX_MLE_SHARE = (1 << 20) * 3 // 4
"""Bytes per MB of the memory limit a run's peak must reach for a failed run to count as
MLE where memory is not measured exactly (3/4 of the limit)."""


@dataclass(frozen=True, kw_only=True)
class JudgeConfig:
    wall_factor: float = 2.0
    """Wall-time limit = time limit x this + ``wall_extra_s`` (sleeping programs are TLE)."""
    wall_extra_s: float = 1.0
    output_mb: int = 16
    """stdout cap per test; beyond it the verdict is OLE."""
    pids: int = 64
    """Processes and threads a test may have at once."""
    tmp_file_mb: int = 32
    """Largest file a program may write in its /tmp."""
    se_retries: int = 2
    """A system error is retried this many times before it is reported."""
    partial_reward: bool = False
    """Reward for a non-AC case: fraction of tests passed (else 0)."""
    message_bytes: int = 2000
    """Compiler / runtime messages are truncated to this."""
    checker_time_s: float = 10.0
    """Time limit for a custom checker program."""
    compile_cache_entries: int = 256
    """Compile / syntax-check outcomes kept, by source hash."""

    def __post_init__(self) -> None:
        if self.wall_factor < 1.0:
            raise ValueError("wall_factor must be >= 1")
        if self.se_retries < 0:
            raise ValueError("se_retries must be >= 0")


class Judge:
    def __init__(self, run: RunFn, config: JudgeConfig = JudgeConfig()) -> None:
        self._run = run
        self.config = config
        self._compiled: OrderedDict[tuple[str, bytes], tuple[bool, bytes]] = OrderedDict()

    def _limits(self, time_s: float, memory_mb: int) -> RunLimits:
        c = self.config
        return RunLimits(
            cpu_s=time_s,
            wall_s=time_s * c.wall_factor + c.wall_extra_s,
            memory_mb=memory_mb,
            pids=c.pids,
            output_bytes=c.output_mb << 20,
            fsize_bytes=c.tmp_file_mb << 20,
        )

    async def _run_retrying(self, req: RunRequest) -> RunFacts:
        facts = await self._run(req)
        for _ in range(self.config.se_retries):
            if not facts.system_error:
                break
            facts = await self._run(req)
        return facts

    def _truncate(self, data: bytes) -> str:
        return data[: self.config.message_bytes].decode("utf-8", "replace")

    async def judge(self, case: CodeCase) -> CaseResult:
        lang = get_language(case.language)
        if lang is None:
            raise ValueError(f"language: unknown {case.language!r}")
        key = (lang.name, hashlib.sha256(case.code.encode("utf-8", "surrogatepass")).digest())
        if key not in self._compiled and _checks_syntax_in_run(case, lang):
            results = await self._run_tests(case, lang, b"", report_syntax=True)
            return self._folded(case, key, results)
        prepared = await self._prepare(case, lang, key)
        if isinstance(prepared, CaseResult):
            return prepared
        results = await self._run_tests(case, lang, prepared)
        return self._summarise(case, results)

    def _folded(
        self, case: CodeCase, key: tuple[str, bytes], results: list[tuple[TestResult, bytes]]
    ) -> CaseResult:
        """A case whose first run checked the syntax itself: CE if it said the source does
        not compile, judged on its tests otherwise; the outcome cached as a syntax check's."""
        failed = next((r for r, _ in results if r.verdict is Verdict.CE), None)
        if failed is not None:
            self._remember(key, (False, failed.message.encode()))
            return self._case_error(case, Verdict.CE, failed.message)
        # A run stopped by a limit may have stopped while compiling: nothing is known then.
        if not any(r.verdict in (Verdict.SE, Verdict.TLE, Verdict.MLE) for r, _ in results):
            self._remember(key, (True, b""))
        return self._summarise(case, results)

    async def _prepare(
        self, case: CodeCase, lang: Language, key: tuple[str, bytes]
    ) -> bytes | CaseResult:
        """Compile or syntax-check once per submission; CE/SE ends the case here.

        Outcomes are cached by source hash: identical samples (common in RL) compile once.
        """
        cached = self._compiled.get(key)
        if cached is not None:
            self._compiled.move_to_end(key)
            ok, value = cached
            return value if ok else self._case_error(case, Verdict.CE, value.decode())
        prepared = await self._compile(case, lang)
        if isinstance(prepared, bytes):
            self._remember(key, (True, prepared))
        elif prepared.verdict is Verdict.CE:
            self._remember(key, (False, prepared.message.encode()))
        return prepared

    def _remember(self, key: tuple[str, bytes], value: tuple[bool, bytes]) -> None:
        self._compiled[key] = value
        while len(self._compiled) > self.config.compile_cache_entries:
            self._compiled.popitem(last=False)

    async def _compile(self, case: CodeCase, lang: Language) -> bytes | CaseResult:
        if lang.in_process_python:
            req = RunRequest(
                kind="python",
                code=case.code,
                mode="syntax",
                limits=self._limits(lang.compile_time_s, lang.compile_memory_mb),
            )
            facts = await self._run_retrying(req)
            if facts.system_error:
                return self._case_error(case, Verdict.SE, facts.system_error)
            if facts.exit_code == 0:
                return b""
            return self._case_error(case, Verdict.CE, self._compile_message(facts))
        try:
            source_path, command = lang.compile_command(case.code)
        except SourceError as e:
            return self._case_error(case, Verdict.CE, f"{lang.name}: {e}")
        req = RunRequest(
            kind="exec",
            argv=command.argv,
            env=command.env,
            files=((source_path, case.code.encode("utf-8", "surrogatepass"), 0o644),),
            capture=lang.artifact_path,
            limits=self._limits(lang.compile_time_s, lang.compile_memory_mb),
        )
        facts = await self._run_retrying(req)
        if facts.system_error:
            return self._case_error(case, Verdict.SE, facts.system_error)
        if facts.exit_code == 0 and facts.artifact:
            return facts.artifact
        return self._case_error(case, Verdict.CE, self._compile_message(facts))

    def _compile_message(self, facts: RunFacts) -> str:
        if facts.oom_kills:
            reason = "compilation exceeded its memory limit"
        elif facts.wall_timeout or facts.signal == signal.SIGXCPU:
            reason = "compilation timed out"
        elif facts.signal is not None:
            reason = f"compiler killed by signal {facts.signal}"
        else:
            reason = ""
        text = self._truncate(facts.stderr)
        return "\n".join(x for x in (reason, text) if x)

    def _case_error(self, case: CodeCase, verdict: Verdict, message: str) -> CaseResult:
        return CaseResult(
            id=case.id,
            verdict=verdict,
            passed=0,
            total=case.test_count,
            reward=0.0,
            message=message[: self.config.message_bytes],
        )

    def _request(
        self,
        case: CodeCase,
        lang: Language,
        artifact: bytes,
        test: object,
        unit: str,
        report_syntax: bool = False,
    ) -> RunRequest:
        limits = self._limits(case.time_limit_s, case.memory_limit_mb)
        if isinstance(test, CodeTest):
            return RunRequest(
                kind="python",
                code=case.code,
                mode="test",
                test_code=test.test_code,
                test_method=unit,
                limits=limits,
            )
        if isinstance(test, CallTest):
            payload = json.dumps({"args": test.args, "kwargs": test.kwargs}).encode()
            return RunRequest(
                kind="python",
                code=case.code,
                mode="call",
                fn_name=case.fn_name or "",
                stdin=payload,
                limits=limits,
                report_syntax=report_syntax,
            )
        assert isinstance(test, StdioTest)
        if lang.in_process_python:
            return RunRequest(
                kind="python",
                code=case.code,
                stdin=test.stdin.encode(),
                limits=limits,
                report_syntax=report_syntax,
            )
        command = lang.run_command(case.code, case.memory_limit_mb)
        return RunRequest(
            kind="exec",
            argv=command.argv,
            env=command.env,
            files=((lang.artifact_path, artifact, 0o755),),
            stdin=test.stdin.encode(),
            limits=limits,
        )

    async def _run_tests(
        self, case: CodeCase, lang: Language, artifact: bytes, report_syntax: bool = False
    ) -> list[tuple[TestResult, bytes]]:
        async def one(test: object, unit: str) -> tuple[TestResult, bytes]:
            req = self._request(case, lang, artifact, test, unit, report_syntax)
            facts = await self._run_retrying(req)
            verdict = await self._verdict(case, lang, test, req.limits, facts)
            result = TestResult(
                verdict=verdict,
                time_s=facts.cpu_s,
                memory_mb=_peak_mb(facts),
                wall_s=facts.wall_s,
                message=facts.system_error or self._truncate(facts.stderr)
                if verdict is not Verdict.AC
                else "",
            )
            return result, facts.stderr

        # Each unittest method of a test-code item is a run (and a test) of its own.
        runs = [
            (t, unit)
            for t in case.tests
            for unit in (t.units if isinstance(t, CodeTest) else ("",))
        ]
        if len(runs) == 1:  # (no task for a lone run)
            return [await one(*runs[0])]
        if not case.early_stop:
            return list(await asyncio.gather(*(one(t, unit) for t, unit in runs)))
        results = []
        for test, unit in runs:
            results.append(await one(test, unit))
            if results[-1][0].verdict is not Verdict.AC:
                break
        return results

    async def _verdict(
        self, case: CodeCase, lang: Language, test: object, limits: RunLimits, facts: RunFacts
    ) -> Verdict:
        if facts.system_error:
            return Verdict.SE
        if facts.extra.get("syntax_error"):
            return Verdict.CE  # (a run that checked the syntax itself: _checks_syntax_in_run)
        # Past the output cap first: a runtime that ignores SIGXFSZ (Node) may keep what it
        # could not write in memory until the OOM killer ends it, and the output itself is
        # charged to the run's memory.
        if facts.stdout_size > limits.output_bytes or facts.signal == signal.SIGXFSZ:
            return Verdict.OLE
        if facts.oom_kills:
            return Verdict.MLE
        over_cpu = facts.cpu_timeout or facts.cpu_s > limits.cpu_s or facts.signal == signal.SIGXCPU
        if facts.wall_timeout or over_cpu:
            return Verdict.TLE
        if isinstance(test, CodeTest):
            # Only the test process can write the marker to stdout (worker/testrun.py).
            if facts.exit_code == 0 and facts.stdout == testwire.PASS_MARKER:
                return Verdict.AC
            if facts.exit_code == testwire.TEST_FAILED:
                return Verdict.WA
        if facts.signal is not None or facts.exit_code != 0:
            # An allocation refused outright (far above the limit), or by a managed
            # runtime's own heap limit, never reaches the OOM killer; the runtime reports it
            # instead (Node before a native stack trace). Faking it gains nothing (still 0).
            if any(m.encode() in facts.stderr for m in lang.memory_errors):
                return Verdict.MLE
            if not facts.memory_exact and facts.peak_bytes >= limits.memory_mb * APPROX_MLE_SHARE:
                # Without a cgroup nothing reports the limit hit: an allocation refused by
                # RLIMIT_AS often ends in a crash (a null pointer written). A run that failed
                # near its limit is taken as out of memory (docs/sandbox.md).
                return Verdict.MLE
            return Verdict.RE
        if isinstance(test, CodeTest):
            return Verdict.RE  # exited 0 without its report: never a pass
        stdout = facts.stdout.decode("utf-8", "replace")
        if isinstance(test, CallTest):
            ok = checkers.call_output_match(test.expected, stdout, case.checker)
        else:
            assert isinstance(test, StdioTest)
            if case.checker.kind is CheckerKind.CUSTOM:
                return await self._custom_check(case, test, stdout)
            ok = checkers.stdio_match(case.checker, test.stdout, stdout)
        return Verdict.AC if ok else Verdict.WA

    async def _custom_check(self, case: CodeCase, test: StdioTest, stdout: str) -> Verdict:
        """Run the dataset's checker program, sandboxed too, on input/expected/actual.

        It reads one JSON object ``{"input", "expected", "output"}`` on stdin and prints
        ``AC`` (or ``1``/``true``/``ok``) when the output is right. A checker that fails is
        our problem (SE), never the submission's.
        """
        payload = json.dumps({"input": test.stdin, "expected": test.stdout, "output": stdout})
        req = RunRequest(
            kind="python",
            code=case.checker.custom_code,
            stdin=payload.encode(),
            limits=self._limits(self.config.checker_time_s, 512),
        )
        facts = await self._run_retrying(req)
        if facts.system_error or facts.exit_code != 0 or facts.signal is not None:
            return Verdict.SE
        words = facts.stdout.decode("utf-8", "replace").split()
        first = words[0].lower() if words else ""
        return Verdict.AC if first in ("ac", "1", "true", "ok", "yes") else Verdict.WA

    def _summarise(self, case: CodeCase, results: list[tuple[TestResult, bytes]]) -> CaseResult:
        tests = tuple(r for r, _ in results)
        passed = sum(t.verdict is Verdict.AC for t in tests)
        total = case.test_count
        failures = [t for t in tests if t.verdict is not Verdict.AC]
        if any(t.verdict is Verdict.SE for t in tests):
            verdict = Verdict.SE
        elif failures:
            verdict = failures[0].verdict
        else:
            verdict = Verdict.AC
        if verdict is Verdict.AC and passed == total:
            reward = 1.0
        elif self.config.partial_reward and total:
            reward = passed / total
        else:
            reward = 0.0
        message = failures[0].message if failures else ""
        return CaseResult(
            id=case.id,
            verdict=verdict,
            passed=passed,
            total=total,
            reward=reward,
            tests=tests,
            message=message,
        )


def _checks_syntax_in_run(case: CodeCase, lang: Language) -> bool:
    """Whether a Python case's first run checks its syntax instead of a run of its own:
    when the runs go one after the other anyway (one test, or ``early_stop``), so the
    check costs no run and delays nothing. Test-code cases keep their own check."""
    if not lang.in_process_python or any(isinstance(t, CodeTest) for t in case.tests):
        return False
    return len(case.tests) == 1 or (case.early_stop and len(case.tests) > 1)


def _peak_mb(facts: RunFacts) -> float:
    """The cgroup's peak; kernels without cgroup v2's memory.peak fall back to max RSS."""
    if facts.peak_bytes:
        return facts.peak_bytes / (1 << 20)
    return float(facts.extra.get("maxrss_kb", 0)) / 1024
