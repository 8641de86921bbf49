"""SandboxFusion's ``POST /run_code`` on the verifier (``serve sandbox --http-port``).

The request shapes are those a SandboxFusion reward client sends (verl's sandbox-fusion
reward code: every field present, ``stdin`` null or text, ``files`` {} and ``fetch_files``
[]), and responses are read the way it reads them. Pure translation first, then the runner
over a fake pool, the HTTP door over fake engines, then the real engine: HTTP and gRPC give
the same results for the same programs, and the real `rlfleet serve sandbox` process.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_grpc_fakes import FakeEngine, until

from rlfleet.grpc_server import ServerConfig
from rlfleet.sandbox import fusion
from rlfleet.sandbox.cases import CaseError
from rlfleet.sandbox.fusion import (
    HttpConfig,
    RunCodeConfig,
    parse_run_code,
    resolve_language,
    run_code_response,
)
from rlfleet.sandbox.http_door import HttpDoor
from rlfleet.sandbox.judge import JudgeConfig
from rlfleet.sandbox.languages import LANGUAGES, Language, get_language
from rlfleet.sandbox.runcode import (
    CommandOutcome,
    ProgramOutcome,
    ProgramRun,
    ProgramRunner,
)
from rlfleet.sandbox.servicer import ServiceConfig, build_verifier_server
from rlfleet.sandbox.worker_handle import RunFacts, RunRequest
from rlfleet.v1 import verifier_pb2 as pb

PYTHON = LANGUAGES["python"]
CPP = LANGUAGES["cpp"]
RLFLEET = [sys.executable, "-m", "rlfleet.cli"]


def verl_payload(code: str, stdin: str | None, language: str = "python", **over: Any) -> str:
    """The body a SandboxFusion reward client sends: every field, in this order, as text."""
    body = {
        "compile_timeout": 10,
        "run_timeout": 10,
        "code": code,
        "stdin": stdin,
        "memory_limit_MB": 1024,
        "language": language,
        "files": {},
        "fetch_files": [],
    }
    body.update(over)
    return json.dumps(body)


def verl_reading(resp: dict[str, Any], expected: str | None) -> str:
    """How that client classifies a response: success, wrong_answer, compile_error,
    timeout, runtime_error or sandbox_error (written from its documented behaviour)."""
    status = resp["status"]
    compiled, ran = resp.get("compile_result"), resp.get("run_result")
    if status == "SandboxError":
        return "sandbox_error"
    if status == "Failed":
        if compiled and (
            compiled["status"] in ("Error", "TimeLimitExceeded")
            or (compiled["status"] == "Finished" and compiled["return_code"] != 0)
        ):
            return "compile_error"
        assert ran is not None
        if ran["status"] == "TimeLimitExceeded":
            return "timeout"
        assert ran["status"] == "Error" or ran["return_code"] != 0
        return "runtime_error"
    assert status == "Success" and ran is not None and ran["status"] == "Finished"
    out = ran["stdout"] if ran["stdout"] is not None else ""
    if expected is None or out.rstrip("\n") == expected.rstrip("\n"):
        return "success"
    return "wrong_answer"


# -- the request ----------------------------------------------------------------------------


def test_the_request_a_reward_client_sends() -> None:
    run = parse_run_code(json.loads(verl_payload("print(input())", "7")))
    assert run == ProgramRun(
        language=PYTHON,
        code="print(input())",
        stdin=b"7",
        compile_timeout_s=10.0,
        run_timeout_s=10.0,
        memory_mb=1024,
        files=(),
    )
    # stdin null: an empty stdin, as SandboxFusion writes nothing.
    assert parse_run_code(json.loads(verl_payload("print(1)", None))).stdin == b""


def test_defaults_are_sandboxfusions() -> None:
    config = RunCodeConfig(memory_mb=512)
    run = parse_run_code({"code": "x", "language": "cpp", "unknown_field": 1}, config)
    assert (run.language, run.compile_timeout_s, run.run_timeout_s, run.memory_mb) == (
        CPP,
        10.0,
        10.0,
        512,
    )
    # SandboxFusion's "no limit" (-1, its default, or 0) is the configured default here.
    for no_limit in (-1, 0, None):
        body = {"code": "x", "language": "python", "memory_limit_MB": no_limit}
        assert parse_run_code(body, config).memory_mb == 512
    timed: dict[str, Any] = {"code": "x", "language": "python", "run_timeout": 0.5}
    run = parse_run_code({**timed, "memory_limit_MB": 64.0})
    assert (run.run_timeout_s, run.memory_mb) == (0.5, 64)


B64 = base64.b64encode(b"hello").decode()


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ([1], "body", "expected a JSON object, got list"),
        ({"language": "python"}, "code", "missing"),
        ({"code": 3, "language": "python"}, "code", "expected a string, got int"),
        ({"code": "x"}, "language", "missing"),
        ({"code": "x", "language": "cobol"}, "language", "unknown 'cobol' (supported: python"),
        ({"code": "x", "language": "php"}, "language", "'php' is not supported here"),
        ({"code": "x", "language": "Python"}, "language", "unknown 'Python'"),
        ({"code": "x", "language": "python", "stdin": 3}, "stdin", "expected a string or null"),
        (
            {"code": "x", "language": "python", "run_timeout": 0},
            "run_timeout",
            "must be in (0, 60]",
        ),
        (
            {"code": "x", "language": "python", "run_timeout": "1"},
            "run_timeout",
            "expected a number",
        ),
        ({"code": "x", "language": "python", "compile_timeout": 61}, "compile_timeout", "(0, 60]"),
        ({"code": "x", "language": "python", "compile_timeout": True}, "compile_timeout", "number"),
        ({"code": "x", "language": "python", "memory_limit_MB": 1.5}, "memory_limit_MB", "integer"),
        (
            {"code": "x", "language": "python", "memory_limit_MB": 8},
            "memory_limit_MB",
            "[16, 8192]",
        ),
        ({"code": "x", "language": "python", "files": []}, "files", "expected an object"),
        ({"code": "x", "language": "python", "files": {"a": 1}}, "files['a']", "base64 text"),
        (
            {"code": "x", "language": "python", "files": {"a": "!!"}},
            "files['a']",
            "not valid base64",
        ),
        ({"code": "x", "language": "python", "files": {"d/a": B64}}, "files['d/a']", "without '/'"),
        ({"code": "x", "language": "python", "files": {"..": B64}}, "files['..']", "without '/'"),
        (
            {"code": "x", "language": "cpp", "files": {"main.cpp": B64}},
            "files['main.cpp']",
            "taken",
        ),
        ({"code": "x", "language": "cpp", "files": {"main": B64}}, "files['main']", "taken"),
        ({"code": "x", "language": "python", "fetch_files": ["a"]}, "fetch_files", "not supported"),
        ({"code": "x", "language": "python", "fetch_files": "a"}, "fetch_files", "expected a list"),
    ],
)
def test_each_bad_field_is_named(body: Any, field: str, says: str) -> None:
    with pytest.raises(CaseError) as err:
        parse_run_code(body)
    assert err.value.field == field
    assert says in err.value.message, err.value.message


def test_files_are_decoded_and_null_or_marked_ones_skipped() -> None:
    files = {"data.txt": B64, "none.txt": None, "x_IGNORE_THIS_FILE": B64, "main.cpp": B64}
    run = parse_run_code({"code": "x", "language": "python", "files": files})
    assert run.files == (("data.txt", b"hello"), ("main.cpp", b"hello"))


def test_sandboxfusion_names_map_to_this_projects_languages(monkeypatch: Any) -> None:
    assert fusion.LANGUAGE_NAMES["nodejs"] == "javascript"
    for name, ours in fusion.LANGUAGE_NAMES.items():
        lang = get_language(ours)
        if lang is not None:
            assert resolve_language(name) is lang
        else:
            with pytest.raises(CaseError, match="is not available on this server"):
                resolve_language(name)
    assert fusion.served_names()[:2] == ["python", "cpp"]
    # A mapped language this server lacks is refused with the list of those it has.
    monkeypatch.delitem(LANGUAGES, "cpp")
    with pytest.raises(CaseError) as err:
        resolve_language("cpp")
    assert err.value.message.startswith("'cpp' is not available on this server (it runs: python")
    assert "cpp" not in fusion.served_names()


# -- the response ---------------------------------------------------------------------------


def outcome(label: str = "OK", **over: Any) -> CommandOutcome:
    fields: dict[str, Any] = {
        "label": label,
        "exit_code": 0,
        "signal": None,
        "wall_s": 0.25,
        "cpu_s": 0.2,
        "stdout": b"out\n",
        "stdout_size": 4,
        "stderr": b"",
    }
    fields.update(over)
    return CommandOutcome(**fields)


def test_response_success_and_failures() -> None:
    ok = run_code_response(ProgramOutcome(compile=None, run=outcome()))
    assert ok == {
        "status": "Success",
        "message": "",
        "compile_result": None,
        "run_result": {
            "status": "Finished",
            "execution_time": 0.25,
            "return_code": 0,
            "stdout": "out\n",
            "stderr": "",
        },
        "executor_pod_name": None,
        "files": {},
    }
    error = outcome("RE", exit_code=1, stderr=b"Traceback\xff")
    failed = run_code_response(ProgramOutcome(compile=None, run=error))
    assert failed["status"] == "Failed"
    assert failed["run_result"]["return_code"] == 1
    assert failed["run_result"]["stderr"] == "Traceback\ufffd"
    # Killed by a signal (the memory cgroup's OOM kill): a negative return code.
    killed = run_code_response(
        ProgramOutcome(compile=None, run=outcome("MLE", exit_code=None, signal=9))
    )
    assert (killed["status"], killed["run_result"]["status"]) == ("Failed", "Finished")
    assert killed["run_result"]["return_code"] == -9
    slow = run_code_response(
        ProgramOutcome(compile=None, run=outcome("TLE", exit_code=None, signal=9))
    )
    assert slow["status"] == "Failed"
    assert slow["run_result"]["status"] == "TimeLimitExceeded"
    assert slow["run_result"]["return_code"] is None


def test_response_compile_failure_and_sandbox_error() -> None:
    ce = outcome("RE", exit_code=1, stdout=b"", stderr=b"main.cpp:1: error")
    resp = run_code_response(ProgramOutcome(compile=ce, run=None))
    assert (resp["status"], resp["run_result"]) == ("Failed", None)
    assert resp["compile_result"]["stderr"] == "main.cpp:1: error"
    assert ProgramOutcome(compile=ce, run=None).label == "CE"
    compiled = outcome(stdout=b"")
    se = outcome("SE", exit_code=None, system_error="worker start failed: boom")
    resp = run_code_response(ProgramOutcome(compile=compiled, run=se))
    assert resp["status"] == "SandboxError"
    assert resp["message"] == "worker start failed: boom"
    assert resp["run_result"] == {
        "status": "Error",
        "execution_time": None,
        "return_code": None,
        "stdout": None,
        "stderr": "worker start failed: boom",
    }
    assert ProgramOutcome(compile=se, run=None).label == "SE"


# -- the runner, over a fake pool -----------------------------------------------------------


def facts(**over: Any) -> RunFacts:
    fields: dict[str, Any] = {
        "exit_code": 0,
        "signal": None,
        "cpu_s": 0.01,
        "wall_s": 0.02,
        "peak_bytes": 1 << 20,
        "oom_kills": 0,
        "wall_timeout": False,
        "stdout": b"",
        "stdout_size": 0,
        "stderr": b"",
    }
    fields.update(over)
    return RunFacts(**fields)


class FakePool:
    """Answers runs with ``answer(req)`` after ``gate``; records every request."""

    def __init__(self, answer: Any = None, gate: asyncio.Event | None = None) -> None:
        self.requests: list[RunRequest] = []
        self.answer = answer or (lambda req: facts(artifact=b"ELF" if req.capture else b""))
        self.gate = gate

    async def run(self, req: RunRequest) -> RunFacts:
        self.requests.append(req)
        if self.gate is not None:
            await self.gate.wait()
        return self.answer(req)


async def test_runner_python_runs_once_with_the_requests_limits() -> None:
    pool = FakePool()
    runner = ProgramRunner(pool.run, JudgeConfig())
    program = ProgramRun(
        language=PYTHON,
        code="print(1)",
        stdin=b"in",
        run_timeout_s=3.0,
        memory_mb=300,
        files=(("a.txt", b"A"),),
    )
    result = await runner.run(program)
    assert (result.compile, result.label) == (None, "OK")
    [req] = pool.requests
    assert (req.kind, req.code, req.stdin, req.files) == (
        "python",
        "print(1)",
        b"in",
        (("/tmp/a.txt", b"A", 0o644),),
    )
    # Wall and CPU time are both the request's run_timeout (SandboxFusion's is wall time).
    assert (req.limits.cpu_s, req.limits.wall_s, req.limits.memory_mb) == (3.0, 3.0, 300)


async def test_runner_compiles_identical_sources_once_even_concurrently() -> None:
    gate = asyncio.Event()
    pool = FakePool(gate=gate)
    runner = ProgramRunner(pool.run, JudgeConfig())
    program = ProgramRun(language=CPP, code="int main(){}", stdin=b"1", compile_timeout_s=7)
    runs = [asyncio.create_task(runner.run(program)) for _ in range(5)]
    await until(lambda: len(pool.requests) == 1, "the compile")
    gate.set()
    results = await asyncio.gather(*runs)
    compiles = [r for r in pool.requests if r.capture]
    assert len(compiles) == 1
    assert compiles[0].argv == CPP.compile_argv
    assert compiles[0].files == ((CPP.source_path, b"int main(){}", 0o644),)
    assert (compiles[0].limits.wall_s, compiles[0].limits.memory_mb) == (7, CPP.compile_memory_mb)
    execs = [r for r in pool.requests if not r.capture]
    assert len(execs) == 5
    assert all(r.files[0] == (CPP.artifact_path, b"ELF", 0o755) for r in execs)
    assert all(r.label == "OK" for r in results)
    # Another source, or the same with other files, is another compile; a repeat is not.
    await runner.run(ProgramRun(language=CPP, code="int main(){}", files=(("h", b"1"),)))
    await runner.run(program)
    assert len([r for r in pool.requests if r.capture]) == 2


async def test_runner_runs_an_interpreted_language_from_its_source() -> None:
    pool = FakePool()
    runner = ProgramRunner(pool.run, JudgeConfig())
    shell = Language(name="sh", source_path="/tmp/main.sh", run_argv=("/bin/sh", "/tmp/main.sh"))
    result = await runner.run(ProgramRun(language=shell, code="echo 1", files=(("a", b"A"),)))
    assert (result.compile, result.label) == (None, "OK")
    [req] = pool.requests
    assert (req.kind, req.argv, req.capture) == ("exec", ("/bin/sh", "/tmp/main.sh"), "")
    assert req.files == (("/tmp/main.sh", b"echo 1", 0o644), ("/tmp/a", b"A", 0o644))


async def test_runner_compile_failures() -> None:
    def answer(req: RunRequest) -> RunFacts:
        if req.capture and req.limits.wall_s < 1:
            return facts(exit_code=None, signal=9, wall_timeout=True)
        if req.capture:
            return facts(exit_code=1, stderr=b"error: x")
        return facts()

    pool = FakePool(answer)
    runner = ProgramRunner(pool.run, JudgeConfig())
    failed = await runner.run(ProgramRun(language=CPP, code="bad"))
    assert (failed.label, failed.run, failed.compile and failed.compile.stderr) == (
        "CE",
        None,
        b"error: x",
    )
    slow = ProgramRun(language=CPP, code="slow", compile_timeout_s=0.5)
    assert (await runner.run(slow)).label == "CE"
    assert (await runner.run(slow)).compile.timed_out  # type: ignore[union-attr]
    # A compile error is kept (one compile); a timed-out compile is tried again.
    assert [r.code or r.files[0][1] for r in pool.requests if r.capture] == [
        b"bad",
        b"slow",
        b"slow",
    ]


async def test_runner_retries_our_failures_then_reports_them() -> None:
    pool = FakePool(lambda req: RunFacts.failure("worker crashed"))
    runner = ProgramRunner(pool.run, JudgeConfig(se_retries=2))
    result = await runner.run(ProgramRun(language=PYTHON, code="print(1)"))
    assert result.label == "SE"
    assert len(pool.requests) == 3
    resp = run_code_response(result)
    assert (resp["status"], resp["message"]) == ("SandboxError", "worker crashed")


# -- the HTTP door, over fake engines -------------------------------------------------------


class FakeProgramEngine:
    """Answers every program with ``outcome`` once ``gate`` is set; records cancellations."""

    def __init__(self, result: ProgramOutcome, gate: asyncio.Event | None = None) -> None:
        self.result = result
        self.gate = gate
        self.seen: list[ProgramRun] = []
        self.cancelled = 0
        self.fail: Exception | None = None

    async def run_program(self, program: ProgramRun) -> ProgramOutcome:
        self.seen.append(program)
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail is not None:
            raise self.fail
        return self.result


class RunningDoor:
    """``async with RunningDoor(engine) as d``: a verifier service with its HTTP door."""

    def __init__(
        self,
        programs: Any,
        max_pending: int | None = None,
        queue_wait_s: float = 600.0,
        **server: Any,
    ) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry()
        config = ServerConfig(port=0, grace_s=5, **server)
        self.srv, self.service = build_verifier_server(
            config, ServiceConfig(max_pending=max_pending), FakeEngine(), self.registry
        )
        http = HttpConfig(port=0, run_code=RunCodeConfig(queue_wait_s=queue_wait_s))
        self.door = HttpDoor(http, config, self.service, programs)

    async def __aenter__(self) -> RunningDoor:
        await self.srv.start()
        self.line = await self.door.start()
        self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()
        await self.door.stop()
        await self.srv.server.stop(0)

    async def post(self, body: str | bytes) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        async with self.http.post(f"{self.door.url}/run_code", data=body, headers=headers) as r:
            return r.status, await r.json(), r

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


OK_OUTCOME = ProgramOutcome(compile=None, run=outcome())


async def test_door_answers_and_counts_like_a_case() -> None:
    programs = FakeProgramEngine(OK_OUTCOME)
    async with RunningDoor(programs) as d:
        assert d.line == f"SandboxFusion-compatible /run_code at {d.door.url}/run_code"
        status, body, resp = await d.post(verl_payload("print(1)", None))
        assert status == 200 and resp.content_type == "application/json"
        assert body == run_code_response(OK_OUTCOME)
        assert verl_reading(body, "out") == "success"
        assert programs.seen[0].code == "print(1)"
        async with d.http.get(f"{d.door.url}/v1/ping") as r:
            assert (r.status, await r.json()) == (200, "pong")
        kind = {"kind": "run", "language": "python", "verdict": "OK"}
        assert d.metric("rlfleet_verifier_cases_total", **kind) == 1
        assert d.metric("rlfleet_verifier_case_seconds_count") == 1
        assert d.metric("rlfleet_verifier_queue_depth") == 0


async def test_door_refuses_bad_requests_naming_the_field() -> None:
    programs = FakeProgramEngine(OK_OUTCOME)
    async with RunningDoor(programs, max_message_mb=1) as d:
        status, body, _ = await d.post(b"{not json")
        assert status == 400
        assert body["field"] == "body" and body["detail"].startswith("body: not valid JSON")
        status, body, _ = await d.post(verl_payload("x", None, language="brainfuck"))
        assert (status, body["field"]) == (422, "language")
        assert (
            body["detail"]
            == "language: unknown 'brainfuck' (supported: " + ", ".join(fusion.served_names()) + ")"
        )
        status, body, _ = await d.post(verl_payload("x", None, memory_limit_MB="lots"))
        assert (status, body["field"]) == (422, "memory_limit_MB")
        status, body, _ = await d.post(verl_payload("x" * (2 << 20), None))
        assert (status, body["field"]) == (413, "body")
        # Over 256 KiB, the body is decoded off the event loop: the same answers.
        status, body, _ = await d.post(b"[" * 300_000)
        assert (status, body["field"]) == (400, "body")
        assert programs.seen == []
        status, body, _ = await d.post(verl_payload("#" * 300_000 + "\nprint(1)", None))
        assert status == 200 and programs.seen[0].code.endswith("print(1)")
        assert d.metric("rlfleet_verifier_rejected_total", reason="invalid") == 4
        assert d.metric("rlfleet_verifier_rejected_total", reason="too_large") == 1
        async with d.http.get(f"{d.door.url}/run_code") as r:
            assert r.status == 405


async def test_door_waits_for_a_slot_504_past_its_wait_and_a_bug_is_500() -> None:
    gate = asyncio.Event()
    programs = FakeProgramEngine(OK_OUTCOME, gate)
    async with RunningDoor(programs, max_pending=1, queue_wait_s=0.3) as d:
        first = asyncio.create_task(d.post(verl_payload("print(1)", None)))
        await until(lambda: len(programs.seen) == 1, "the first run")
        # The queue stays full longer than a request waits: 504, which reward clients retry.
        status, body, resp = await d.post(verl_payload("print(2)", None))
        assert status == 504 and resp.headers["Retry-After"] == "1"
        assert "queue full" in body["detail"]
        assert d.metric("rlfleet_verifier_rejected_total", reason="queue_full") == 1
        # One that comes while the queue is full, and gets its slot within its wait, runs.
        waiting = asyncio.create_task(d.post(verl_payload("print(3)", None)))
        await asyncio.sleep(0.1)
        assert len(programs.seen) == 1 and not waiting.done()
        gate.set()
        assert (await first)[0] == 200 and (await waiting)[0] == 200
        assert [p.code for p in programs.seen] == ["print(1)", "print(3)"]
        programs.fail = RuntimeError("secret internals")
        status, body, _ = await d.post(verl_payload("print(3)", None))
        assert (status, body["detail"]) == (500, "internal error")


async def test_a_client_that_goes_away_cancels_its_run() -> None:
    programs = FakeProgramEngine(OK_OUTCOME, asyncio.Event())
    async with RunningDoor(programs) as d:
        timeout = aiohttp.ClientTimeout(total=0.5)
        with pytest.raises(asyncio.TimeoutError):
            async with d.http.post(
                f"{d.door.url}/run_code", data=verl_payload("print(1)", None), timeout=timeout
            ):
                pass
        await until(lambda: programs.cancelled == 1, "the run's cancellation")
        await until(lambda: d.service.pending == 0, "the slot given back")


async def test_stopping_lets_runs_in_flight_finish_and_refuses_new_ones() -> None:
    gate = asyncio.Event()
    programs = FakeProgramEngine(OK_OUTCOME, gate)
    async with RunningDoor(programs) as d:
        in_flight = asyncio.create_task(d.post(verl_payload("print(1)", None)))
        await until(lambda: len(programs.seen) == 1, "the run")
        stopping = asyncio.create_task(d.door.stop())
        await asyncio.sleep(0.2)
        with pytest.raises(aiohttp.ClientConnectionError):
            await d.post(verl_payload("print(2)", None))
        gate.set()
        status, body, _ = await in_flight
        assert (status, body["status"]) == (200, "Success")
        await stopping
        assert programs.cancelled == 0


async def test_door_speaks_tls_when_the_grpc_port_does(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test certificate (apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    async with RunningDoor(FakeProgramEngine(OK_OUTCOME), tls_cert=cert, tls_key=key) as d:
        assert d.door.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(cert))
        async with d.http.get(f"{d.door.url}/v1/ping", ssl=trusted) as r:
            assert r.status == 200
        plain = d.door.url.replace("https://", "http://")
        with pytest.raises(aiohttp.ClientError):  # plaintext is refused
            async with d.http.get(f"{plain}/v1/ping") as r:
                await r.read()


# -- the real engine ------------------------------------------------------------------------


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
async def engine(request: pytest.FixtureRequest, require_root: None) -> AsyncIterator[Any]:
    from rlfleet.sandbox.engine import Engine, EngineConfig
    from rlfleet.sandbox.worker_pool import PoolConfig

    config = EngineConfig(backend=request.param, pool=PoolConfig(workers=2))
    real = await Engine.start(config)
    try:
        yield real
    finally:
        await real.close()


def compile_count(engine: Any) -> float:
    """Compiles the engine has run (its execution-time histogram, stage "compile")."""
    for family in engine.metrics.execution_seconds.collect():
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels["stage"] == "compile":
                return float(sample.value)
    return 0.0


class Door(RunningDoor):
    """``RunningDoor`` over a real engine (cases and programs both)."""

    def __init__(self, real: Any) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry()
        config = ServerConfig(port=0, grace_s=5)
        self.srv, self.service = build_verifier_server(config, ServiceConfig(), real, self.registry)
        self.door = HttpDoor(HttpConfig(port=0), config, self.service, real)


CPP_SUM = "#include <iostream>\nint main(){long a,b;std::cin>>a>>b;std::cout<<a+b<<std::endl;}\n"
# A function-call test as such clients send it: the program wrapped so that it reads the
# arguments (one JSON value a line) and prints the result, run as __main__.
CALL_WRAPPED = (
    "import json, sys\n"
    "def add(a, b):\n    return a + b\n"
    "if __name__ == '__main__':\n"
    "    args = [json.loads(line) for line in sys.stdin.read().split('\\n') if line.strip()]\n"
    "    print(json.dumps(add(*args)))\n"
)
SPY = (
    "import os, socket\n"
    "print(os.getuid(), os.path.exists('/proc/1'), os.getcwd(), open('data.txt').read())\n"
    "socket.create_connection(('127.0.0.1', int(input())), timeout=1)\n"
)


async def test_reward_client_shapes_with_the_real_engine(engine: Any) -> None:
    programs: list[tuple[str, dict[str, Any], str | None, str]] = [
        (verl_payload("print(input()[::-1])", "abc"), {}, "cba", "success"),
        (verl_payload("print(input())", "abc"), {}, "abd", "wrong_answer"),
        (verl_payload(CALL_WRAPPED, "[1, 2]\n[3]"), {}, "[1, 2, 3]", "success"),
        (verl_payload("print(1)", None), {}, None, "success"),
        (verl_payload("print('x' * (1 << 20))", None), {}, "x" * (1 << 20), "success"),
        (verl_payload("raise SystemExit(3)", None), {"return_code": 3}, None, "runtime_error"),
        (verl_payload("import time\ntime.sleep(5)", None, run_timeout=1), {}, None, "timeout"),
        (verl_payload("def f(:", None), {"return_code": 1}, None, "runtime_error"),
        (verl_payload(CPP_SUM, "2 40", "cpp"), {}, "42", "success"),
        (verl_payload("int main( {", None, "cpp"), {}, None, "compile_error"),
        (
            verl_payload("#include <cassert>\nint main(){assert(1 == 2);}", None, "cpp"),
            {"return_code": -6},
            None,
            "runtime_error",
        ),
        (verl_payload("int main(){for(;;);}", None, "cpp", run_timeout=0.5), {}, None, "timeout"),
    ]
    async with Door(engine) as d:
        for body, run_fields, expected, reading in programs:
            status, resp, _ = await d.post(body)
            assert status == 200, resp
            assert verl_reading(resp, expected) == reading, (body, resp)
            for key, value in run_fields.items():
                assert resp["run_result"][key] == value, resp
        # The program runs in the sandbox, not in this process: user nobody, no /proc, no
        # network (the server's own port is unreachable); files land in its working directory.
        files = {"data.txt": base64.b64encode(b"payload").decode()}
        status, resp, _ = await d.post(verl_payload(SPY, str(d.door.port), files=files))
        run = resp["run_result"]
        assert (status, resp["status"], run["status"]) == (200, "Failed", "Finished")
        assert run["stdout"] == "65534 False /tmp payload\n"
        assert "OSError" in run["stderr"] or "Error" in run["stderr"], run["stderr"]
        # One sample's tests arrive at once: one compile for all of them.
        compiles = compile_count(engine)
        source = CPP_SUM.replace("a+b", "a*b")
        bodies = [verl_payload(source, f"{i} 2", "cpp") for i in range(8)]
        answers = await asyncio.gather(*(d.post(body) for body in bodies))
        assert [verl_reading(r[1], str(2 * i)) for i, r in enumerate(answers)] == ["success"] * 8
        assert compile_count(engine) == compiles + 1
        # Counted under kind "run", by outcome; executions per language too.
        assert (
            d.metric("rlfleet_verifier_cases_total", kind="run", language="cpp", verdict="CE") == 1
        )
        assert engine.metrics.executions.labels("python", "TLE")._value.get() == 1


VERDICT_AS_READ = {
    pb.VERDICT_AC: "success",
    pb.VERDICT_WA: "wrong_answer",
    pb.VERDICT_CE: "compile_error",
    pb.VERDICT_TLE: "timeout",
    pb.VERDICT_RE: "runtime_error",
    # SandboxFusion has no memory verdict: an OOM-killed program exits -9.
    pb.VERDICT_MLE: "runtime_error",
}
# Nor a compile step for Python: a syntax error is the run failing (exit 1), as under python3.
PYTHON_CE_AS_READ = "runtime_error"
SAME_PROGRAMS = [
    ("python", "print(int(input()) * 2)", "21", "42"),
    ("python", "print(int(input()) * 3)", "21", "42"),
    ("python", "print(1 / 0)", "", "1"),
    ("python", "while True:\n    pass", "", "1"),
    ("python", "x = 1 +", "", "1"),
    ("python", "x = bytearray(1 << 30)\nprint(len(x))", "", "1"),
    ("cpp", CPP_SUM, "20 22", "42"),
    ("cpp", CPP_SUM, "20 23", "42"),
    ("cpp", "int main() { return 1; }", "", ""),
    ("cpp", "int main() { for (;;); }", "", ""),
    ("cpp", "int main() { return x; }", "", ""),
]


async def test_http_and_grpc_give_the_same_results(engine: Any) -> None:
    import grpc

    from rlfleet.v1 import verifier_pb2_grpc as pb_grpc

    async with Door(engine) as d:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{d.srv.port}")
        stub = pb_grpc.VerifierStub(channel)
        try:
            for language, code, stdin, expected in SAME_PROGRAMS:
                problem = pb.Problem(
                    stdio_tests=[pb.StdioTest(stdin=stdin, stdout=expected)],
                    time_limit_s=1,
                    memory_limit_mb=128,
                )
                req = pb.VerifyRequest(
                    id="x", code=pb.CodeCase(language=language, code=code, problem=problem)
                )
                via_grpc = await stub.Verify(req, timeout=60)
                # The same wall time as the judged test's (1 s x 2 + 1 s): a memory bomb on a
                # loaded machine must meet the OOM killer before the clock in both.
                # And the judge's compile limit, so a slow compile on a loaded machine is no
                # compile error on one path only.
                lang = get_language(language)
                assert lang is not None
                body = verl_payload(
                    code,
                    stdin,
                    language,
                    run_timeout=3,
                    memory_limit_MB=128,
                    compile_timeout=lang.compile_time_s,
                )
                status, resp, _ = await d.post(body)
                assert status == 200
                as_read = VERDICT_AS_READ[via_grpc.verdict]
                if language == "python" and via_grpc.verdict == pb.VERDICT_CE:
                    as_read = PYTHON_CE_AS_READ
                assert as_read == verl_reading(resp, expected), (
                    code,
                    via_grpc,
                    resp,
                )
        finally:
            await channel.close()


def test_serve_sandbox_with_http_port_as_a_process(require_root: None) -> None:
    proc = subprocess.Popen(
        [*RLFLEET, "serve", "sandbox", "--port", "0", "--http-port", "0", "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("listening on" in x for x in lines):
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
        [door] = [x for x in lines if "/run_code at " in x]
        url = door.rsplit(" ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/run_code")
        threading.Thread(target=proc.stderr.read, daemon=True).start()

        async def call() -> dict[str, Any]:
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    url,
                    data=verl_payload(CPP_SUM, "1 2", "cpp"),
                    headers={"Content-Type": "application/json"},
                ) as r,
            ):
                assert r.status == 200
                result: dict[str, Any] = await r.json()
                return result

        resp = asyncio.run(call())
        assert verl_reading(resp, "3") == "success", resp
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
