"""Run a program as it is and report how it ended: no tests, no expected output, no verdict.

This is what the SandboxFusion-compatible ``POST /run_code`` door needs (``fusion.py``): the
caller compares the output itself. It runs on the same worker pool as judged cases, with the
same languages: a compiled language is compiled once (identical sources, as RL sends them
for every test of one sample, share one compile, also while it runs), then its artifact is
run with the given stdin; a language without a compiler runs its interpreter on the source;
Python runs in the worker's warm interpreter, as ``main.py``.

Outcomes keep the raw facts (exit code, signal, output) and say, in the judge's vocabulary
and with its precedence, what was hit first: SE, MLE, OLE, TLE, RE; OK for a clean exit.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections import OrderedDict
from dataclasses import dataclass

from rlfleet.sandbox.judge import JudgeConfig, RunFn
from rlfleet.sandbox.languages import Language
from rlfleet.sandbox.worker_handle import RunFacts, RunLimits, RunRequest

OK = "OK"
"""The outcome label of a run that exited 0 within its limits."""


@dataclass(frozen=True, kw_only=True)
class ProgramRun:
    """One program to run once."""

    language: Language
    code: str
    stdin: bytes = b""
    compile_timeout_s: float = 10.0
    """Wall and CPU time for compiling (compiled languages only)."""
    run_timeout_s: float = 10.0
    """Wall and CPU time for the run."""
    memory_mb: int = 1024
    """Memory of the run (compiling gets the language's own allowance)."""
    files: tuple[tuple[str, bytes], ...] = ()
    """(name in the working directory /tmp, content): there for compiling and for the run."""


@dataclass(frozen=True, kw_only=True)
class CommandOutcome:
    """How one command (the compiler, or the program) ended."""

    label: str
    """What was hit first: SE, MLE, OLE, TLE, RE, or OK (``OK``)."""
    exit_code: int | None
    """The exit status; None when a signal ended it (``signal``) or it never ran (SE)."""
    signal: int | None
    wall_s: float
    cpu_s: float
    stdout: bytes
    """At most the output cap (``stdout_size`` says how much was written)."""
    stdout_size: int
    stderr: bytes
    system_error: str = ""
    """Our own failure (the label is SE): the command's result says nothing of the program."""

    @property
    def timed_out(self) -> bool:
        return self.label == "TLE"


@dataclass(frozen=True, kw_only=True)
class ProgramOutcome:
    compile: CommandOutcome | None
    """None for a language that runs from source (Python, interpreted ones)."""
    run: CommandOutcome | None
    """None when compiling did not succeed."""

    @property
    def label(self) -> str:
        """The outcome as one label: CE when compiling failed, else the run's (SE first)."""
        if self.compile is not None and self.compile.label == "SE":
            return "SE"
        if self.run is None:
            return "CE"
        return self.run.label


def outcome_of(facts: RunFacts, limits: RunLimits) -> CommandOutcome:
    """Facts as an outcome, with the judge's precedence (``judge.Judge._verdict``)."""
    over_cpu = facts.cpu_timeout or facts.cpu_s > limits.cpu_s or facts.signal == signal.SIGXCPU
    if facts.system_error:
        label = "SE"
    elif facts.oom_kills:
        label = "MLE"
    elif facts.stdout_size > limits.output_bytes or facts.signal == signal.SIGXFSZ:
        label = "OLE"
    elif facts.wall_timeout or over_cpu:
        label = "TLE"
    elif facts.signal is not None or facts.exit_code != 0:
        label = "RE"
    else:
        label = OK
    return CommandOutcome(
        label=label,
        exit_code=facts.exit_code,
        signal=facts.signal,
        wall_s=facts.wall_s,
        cpu_s=facts.cpu_s,
        stdout=facts.stdout,
        stdout_size=facts.stdout_size,
        stderr=facts.stderr,
        system_error=facts.system_error,
    )


@dataclass(frozen=True)
class _Compiled:
    outcome: CommandOutcome
    artifact: bytes | None
    """The compiled program; None when compiling failed."""


class ProgramRunner:
    """Runs ``ProgramRun``s through ``run`` (the engine's pool), retrying our own failures."""

    def __init__(self, run: RunFn, config: JudgeConfig) -> None:
        self._run = run
        self.config = config
        self._compiled: OrderedDict[bytes, _Compiled] = OrderedDict()
        self._compiling: dict[bytes, asyncio.Task[_Compiled]] = {}

    def _limits(self, time_s: float, memory_mb: int) -> RunLimits:
        c = self.config
        output = c.output_mb << 20
        return RunLimits(
            cpu_s=time_s,
            wall_s=time_s,
            memory_mb=memory_mb,
            pids=c.pids,
            output_bytes=output,
            fsize_bytes=c.tmp_file_mb << 20,
            stderr_bytes=output,
        )

    async def _run_retrying(self, req: RunRequest) -> RunFacts:
        facts = await self._run(req)
        for _ in range(self.config.se_retries):
            if not facts.system_error:
                break
            facts = await self._run(req)
        return facts

    async def run(self, program: ProgramRun) -> ProgramOutcome:
        lang = program.language
        files = tuple((f"/tmp/{name}", data, 0o644) for name, data in program.files)
        limits = self._limits(program.run_timeout_s, program.memory_mb)
        if lang.in_process_python:
            req = RunRequest(
                kind="python", code=program.code, stdin=program.stdin, files=files, limits=limits
            )
            facts = await self._run_retrying(req)
            return ProgramOutcome(compile=None, run=outcome_of(facts, limits))
        if not lang.compile_argv:
            # Runs from its source (an interpreter in run_argv reads source_path).
            source = (lang.source_path, program.code.encode("utf-8", "surrogatepass"), 0o644)
            req = RunRequest(
                kind="exec",
                argv=lang.run_argv,
                files=(source, *files),
                stdin=program.stdin,
                limits=limits,
            )
            facts = await self._run_retrying(req)
            return ProgramOutcome(compile=None, run=outcome_of(facts, limits))
        compiled = await self._compile(program, files)
        if compiled.artifact is None:
            return ProgramOutcome(compile=compiled.outcome, run=None)
        req = RunRequest(
            kind="exec",
            argv=lang.run_argv,
            files=((lang.artifact_path, compiled.artifact, 0o755), *files),
            stdin=program.stdin,
            limits=limits,
        )
        facts = await self._run_retrying(req)
        return ProgramOutcome(compile=compiled.outcome, run=outcome_of(facts, limits))

    async def _compile(
        self, program: ProgramRun, files: tuple[tuple[str, bytes, int], ...]
    ) -> _Compiled:
        """Compile once per (language, source, files): concurrent requests for the same key
        wait for the one compile in flight (under its time limit), which goes on if they are
        cancelled. Outcomes that another try could change (TLE, SE) are not kept."""
        key = _compile_key(program)
        cached = self._compiled.get(key)
        if cached is not None:
            self._compiled.move_to_end(key)
            return cached
        task = self._compiling.get(key)
        if task is None:
            task = asyncio.create_task(self._compile_now(program, files, key))
            self._compiling[key] = task
            task.add_done_callback(lambda _: self._compiling.pop(key, None))
        return await asyncio.shield(task)

    async def _compile_now(
        self, program: ProgramRun, files: tuple[tuple[str, bytes, int], ...], key: bytes
    ) -> _Compiled:
        lang = program.language
        limits = self._limits(program.compile_timeout_s, lang.compile_memory_mb)
        source = program.code.encode("utf-8", "surrogatepass")
        req = RunRequest(
            kind="exec",
            argv=lang.compile_argv,
            files=((lang.source_path, source, 0o644), *files),
            capture=lang.artifact_path,
            limits=limits,
        )
        facts = await self._run_retrying(req)
        outcome = outcome_of(facts, limits)
        if outcome.label == OK and not facts.artifact:
            outcome = outcome_of(RunFacts.failure("the compiler left no program behind"), limits)
        compiled = _Compiled(outcome, facts.artifact if outcome.label == OK else None)
        if outcome.label not in ("TLE", "SE"):
            self._compiled[key] = compiled
            while len(self._compiled) > self.config.compile_cache_entries:
                self._compiled.popitem(last=False)
        return compiled


def _compile_key(program: ProgramRun) -> bytes:
    h = hashlib.sha256()
    for part in (
        program.language.name.encode(),
        program.code.encode("utf-8", "surrogatepass"),
        *(x for name, data in program.files for x in (name.encode(), data)),
    ):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.digest()
