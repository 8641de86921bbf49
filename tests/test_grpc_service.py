"""The verifier service over real gRPC on loopback, with a fake engine: the contract, error
mapping, admission control, deadlines and cancellation, stream back-pressure, problem
registration, health, reflection, metrics, and graceful shutdown of a real process."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast
from urllib.request import urlopen

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from test_grpc_fakes import (
    FakeEngine,
    Running,
    code_case,
    code_request,
    stdio_problem,
    until,
)

from rlfleet.grpc_server import NotFound, ResourceExhausted, ServerConfig, start_metrics
from rlfleet.sandbox.client import ClientConfig, VerifierClient
from rlfleet.sandbox.records import Verdict
from rlfleet.sandbox.servicer import ProblemStore, ServiceConfig
from rlfleet.v1 import verifier_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
SERVING = health_pb2.HealthCheckResponse.SERVING


async def test_unary_code_call_and_math() -> None:
    async with Running(FakeEngine()) as s:
        r = await s.stub.Verify(code_request("c1", tests=3))
        assert (r.id, r.verdict, r.passed, r.total, r.reward, r.error) == (
            "c1",
            pb.VERDICT_AC,
            3,
            3,
            1,
            "",
        )
        assert not r.HasField("extracted")
        call = pb.VerifyRequest(
            id="f1",
            code=pb.CodeCase(
                language="python",
                code="def f(a, b):\n    return a + b\n",
                problem=pb.Problem(
                    fn_name="f",
                    call_tests=[pb.CallTest(args_json="[1, 2]", expected_json="3")],
                    time_limit_s=1.5,
                    memory_limit_mb=128,
                    checker=pb.Checker(type=pb.CHECKER_KIND_FLOAT, abs_tol=1e-3),
                ),
            ),
        )
        assert (await s.stub.Verify(call)).verdict == pb.VERDICT_AC
        m = await s.stub.Verify(
            pb.VerifyRequest(id="m1", math=pb.MathCase(completion="\\boxed{42}", gold="42"))
        )
        assert (m.id, m.verdict, m.extracted) == ("m1", pb.VERDICT_AC, "42")
        assert s.engine.seen == ["c1", "f1", "m1"]


async def test_unary_with_the_real_engine() -> None:
    if os.geteuid() != 0:
        pytest.fail("the local sandbox backend needs root (CI runs as root)")
    from rlfleet.sandbox.engine import Engine, EngineConfig
    from rlfleet.sandbox.worker_pool import PoolConfig

    engine = await Engine.start(EngineConfig(pool=PoolConfig(workers=1)))
    try:
        async with Running(engine) as s:
            r = await s.stub.Verify(code_request("c1", tests=2))
            assert (r.verdict, r.passed, r.total) == (pb.VERDICT_AC, 2, 2)
            assert all(t.verdict == pb.VERDICT_AC for t in r.tests)
    finally:
        await engine.close()


async def test_test_code_with_the_real_engine() -> None:
    if os.geteuid() != 0:
        pytest.fail("the local sandbox backend needs root (CI runs as root)")
    from rlfleet.sandbox.engine import Engine, EngineConfig
    from rlfleet.sandbox.worker_pool import PoolConfig

    unittest_code = (
        "import unittest\n"
        "class T(unittest.TestCase):\n"
        "    def test_small(self):\n        self.assertEqual(add(1, 1), 2)\n"
        "    def test_tuple(self):\n        self.assertEqual(add((1,), (2,)), (1, 2))\n"
    )
    problem = pb.Problem(
        code_tests=[
            pb.CodeTest(test_code="assert add(1, 2) == 3\n"),
            pb.CodeTest(test_code=unittest_code),
        ]
    )
    engine = await Engine.start(EngineConfig(pool=PoolConfig(workers=1)))
    try:
        async with Running(engine) as s:
            for program, verdict, passed in [
                ("def add(a, b):\n    return a + b\n", pb.VERDICT_AC, 3),
                ("def add(a, b):\n    return a\n", pb.VERDICT_WA, 0),
            ]:
                req = pb.VerifyRequest(
                    id="t", code=pb.CodeCase(language="python", code=program, problem=problem)
                )
                r = await s.stub.Verify(req)
                assert (r.verdict, r.passed, r.total) == (verdict, passed, 3), r
    finally:
        await engine.close()


def _code(**problem: Any) -> pb.VerifyRequest:
    fields: dict[str, Any] = {"language": "python", "code": "print(1)"}
    fields.update({k: v for k, v in problem.items() if k in ("language", "code")})
    rest = {k: v for k, v in problem.items() if k not in ("language", "code")}
    return pb.VerifyRequest(id="x", code=pb.CodeCase(**fields, problem=pb.Problem(**rest)))


ONE = [pb.StdioTest(stdout="1")]


@pytest.mark.parametrize(
    ("request_pb", "field"),
    [
        (pb.VerifyRequest(id="x"), "case"),
        (pb.VerifyRequest(id="x", code=pb.CodeCase(language="python", code="1")), "suite"),
        (_code(language="", stdio_tests=ONE), "language"),
        (_code(language="cobol", stdio_tests=ONE), "language"),
        (
            pb.VerifyRequest(
                code=pb.CodeCase(language="python", code="1", problem=pb.Problem(stdio_tests=ONE))
            ),
            "id",
        ),
        (_code(stdio_tests=[*ONE, *ONE, *ONE, pb.StdioTest(stdin="x")]), "tests[3].stdout"),
        (_code(), "tests"),
        (_code(fn_name="f", call_tests=[pb.CallTest(args_json="[1,")]), "tests[0].args_json"),
        (_code(call_tests=[pb.CallTest(args_json="[]", expected_json="1")]), "fn_name"),
        (_code(stdio_tests=ONE, time_limit_s=1e9), "time_limit_s"),
        (_code(code_tests=[pb.CodeTest(test_code="assert (")]), "tests[0].test_code"),
        (_code(stdio_tests=ONE, code_tests=[pb.CodeTest()]), "problem.code_tests"),
        (
            _code(stdio_tests=ONE, checker=pb.Checker(type=cast(pb.CheckerKind, 99))),
            "checker.type",
        ),  # newer client
        (_code(stdio_tests=ONE, checker=pb.Checker(abs_tol=0.1)), "checker.type"),  # UNSPECIFIED
        (_code(code="x" * (2 << 20), stdio_tests=ONE), "code"),  # oversized field
        (pb.VerifyRequest(id="x", math=pb.MathCase(completion="1")), "gold"),
    ],
)
async def test_invalid_requests_name_the_field(request_pb: pb.VerifyRequest, field: str) -> None:
    async with Running(FakeEngine()) as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.Verify(request_pb)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(f"{field}: "), err.value.details()
        assert s.engine.seen == []
        assert s.metric("rlfleet_verifier_rejected_total", reason="invalid") == 1


async def test_garbage_bytes_and_oversized_messages_leave_the_server_healthy() -> None:
    async with Running(FakeEngine()) as s:
        raw = s.channel.unary_unary("/rlfleet.v1.Verifier/Verify")  # bytes in, bytes out
        for junk in (b"\xff\xfe\xfd\x00garbage", bytes(range(256)) * 4, os.urandom(4096)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(junk)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith("request: not a valid message")
        with pytest.raises(grpc.aio.AioRpcError) as err:  # past the 64 MiB limit
            await raw(b"\x0a" + b"\xff" * 10 + b"x" * (65 << 20))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await s.health() == SERVING
        assert (await s.stub.Verify(code_request("ok"))).verdict == pb.VERDICT_AC


async def test_garbage_item_in_a_stream_is_answered_and_the_stream_goes_on() -> None:
    async with Running(FakeEngine()) as s:
        raw = s.channel.stream_stream("/rlfleet.v1.Verifier/VerifyStream")
        good = code_request("after").SerializeToString()
        replies = [pb.VerifyResponse.FromString(r) async for r in raw(iter([b"\xff\xff", good]))]
        assert [(r.id, r.error_code) for r in replies] == [
            ("", pb.ERROR_CODE_INVALID_ARGUMENT),
            ("after", pb.ERROR_CODE_UNSPECIFIED),
        ]
        assert replies[1].verdict == pb.VERDICT_AC


async def test_engine_failures_are_internal_without_details() -> None:
    async with Running(FakeEngine(fail=RuntimeError("secret path /etc/x"))) as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.Verify(code_request("a"))
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in (err.value.details() or "")
        assert "Traceback" not in (err.value.debug_error_string() or "")

        async def two() -> AsyncIterator[pb.VerifyRequest]:
            yield code_request("b")
            yield code_request("c")

        replies = [r async for r in s.stub.VerifyStream(two())]
        assert sorted((r.id, r.error_code, r.error) for r in replies) == [
            ("b", pb.ERROR_CODE_INTERNAL, "internal error"),
            ("c", pb.ERROR_CODE_INTERNAL, "internal error"),
        ]
        assert await s.health() == SERVING


async def test_queue_full_is_resource_exhausted() -> None:
    gate = asyncio.Event()
    async with Running(FakeEngine(gate=gate), max_pending=2) as s:
        first = [asyncio.ensure_future(s.stub.Verify(code_request(f"a{i}"))) for i in range(2)]
        await until(lambda: len(s.engine.seen) == 2, "two cases admitted")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.Verify(code_request("over"))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full" in err.value.details()
        assert s.metric("rlfleet_verifier_rejected_total", reason="queue_full") == 1
        gate.set()
        assert [r.verdict for r in await asyncio.gather(*first)] == [pb.VERDICT_AC] * 2
        assert (await s.stub.Verify(code_request("later"))).verdict == pb.VERDICT_AC


async def test_deadline_and_client_cancel_cancel_the_engine_task() -> None:
    engine = FakeEngine(gate=asyncio.Event())  # never finishes on its own
    async with Running(engine) as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.Verify(code_request("slow"), timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: engine.cancelled == ["slow"], "the engine task cancelled")

        call = s.stub.Verify(code_request("gone"))
        await until(lambda: "gone" in engine.seen, "the case reaching the engine")
        call.cancel()
        await until(lambda: engine.cancelled == ["slow", "gone"], "the engine task cancelled")
        await until(lambda: s.service.pending == 0, "pending back to zero")


async def test_stream_results_come_as_they_finish_and_errors_keep_it_open() -> None:
    # "first" is held until every other answer has arrived, so its result comes last.
    release_first = asyncio.Event()
    engine = FakeEngine(gates={"first": release_first})
    async with Running(engine) as s:

        async def requests() -> AsyncIterator[pb.VerifyRequest]:
            yield code_request("first")
            yield pb.VerifyRequest(id="bad")  # neither code nor math
            yield pb.VerifyRequest(
                id="unknown",
                code=pb.CodeCase(language="python", code="1", problem_ref="ab" * 32),
            )
            for i in range(5):
                yield code_request(f"s{i}")

        replies = []
        async for r in s.stub.VerifyStream(requests()):
            replies.append(r)
            if len(replies) == 7:
                release_first.set()
        assert replies[-1].id == "first"
        errors = {r.id: (r.error_code, r.error) for r in replies if r.error}
        assert errors == {
            "bad": (pb.ERROR_CODE_INVALID_ARGUMENT, "case: missing (set code or math)"),
            "unknown": (
                pb.ERROR_CODE_NOT_FOUND,
                f"problem_ref: unknown {'ab' * 32!r} (register it again)",
            ),
        }
        assert sorted(r.id for r in replies if not r.error) == sorted(
            ["first", *(f"s{i}" for i in range(5))]
        )


async def test_stream_backpressure_keeps_admitted_cases_bounded() -> None:
    gate = asyncio.Event()
    engine = FakeEngine(gate=gate)
    async with Running(engine, max_pending=4) as s:
        call = s.stub.VerifyStream(code_request(f"s{i}") for i in range(200))
        await until(lambda: len(engine.seen) == 4, "the budget filled")
        for _ in range(20):  # the server stops reading: nothing more is admitted
            await asyncio.sleep(0.01)
            assert len(engine.seen) == 4 and s.service.pending == 4
        gate.set()
        ids = [r.id async for r in call]
        assert sorted(ids) == sorted(f"s{i}" for i in range(200))
        assert engine.peak <= 4


async def test_cancelled_stream_gives_its_slots_back() -> None:
    gate = asyncio.Event()
    engine = FakeEngine(gate=gate)
    async with Running(engine, max_pending=3) as s:
        call = s.stub.VerifyStream(code_request(f"s{i}") for i in range(10))
        await until(lambda: len(engine.seen) == 3, "the budget filled")
        call.cancel()
        await until(lambda: len(engine.cancelled) == 3, "the stream's cases cancelled")
        await until(lambda: s.service.pending == 0, "pending back to zero")
        # All three slots are free again: three unary calls are admitted together.
        gate.set()
        replies = await asyncio.gather(*(s.stub.Verify(code_request(f"u{i}")) for i in range(3)))
        assert [r.verdict for r in replies] == [pb.VERDICT_AC] * 3


async def test_stream_deadline_cancels_the_engine_tasks() -> None:
    engine = FakeEngine(gate=asyncio.Event())
    async with Running(engine) as s:
        call = s.stub.VerifyStream(iter([code_request("a"), code_request("b")]), timeout=0.3)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            _ = [r async for r in call]
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: sorted(engine.cancelled) == ["a", "b"], "both cancelled")
        await until(lambda: s.service.pending == 0, "pending back to zero")


async def test_problem_registration_and_refs() -> None:
    async with Running(FakeEngine()) as s:
        problem = stdio_problem(50)
        ref = (await s.stub.RegisterProblem(problem)).sha256
        assert len(ref) == 64 and ref == (await s.stub.RegisterProblem(problem)).sha256
        assert ref != (await s.stub.RegisterProblem(stdio_problem(49))).sha256
        r = await s.stub.Verify(
            pb.VerifyRequest(
                id="r", code=pb.CodeCase(language="python", code="print(1)", problem_ref=ref)
            )
        )
        assert (r.verdict, r.total) == (pb.VERDICT_AC, 50)
        unknown = "0" * 64
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.Verify(
                pb.VerifyRequest(
                    id="r", code=pb.CodeCase(language="python", code="x", problem_ref=unknown)
                )
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details().startswith("problem_ref: ") and unknown in err.value.details()
        for bad, field in ((pb.Problem(), "tests"), (stdio_problem(0), "tests")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s.stub.RegisterProblem(bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith(f"{field}: ")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.RegisterProblem(pb.Problem(stdio_tests=[pb.StdioTest(stdin="1")]))
        assert err.value.details() == "tests[0].stdout: missing"


def test_problem_store_is_bounded_lru() -> None:
    small = stdio_problem(3)
    store = ProblemStore(max_bytes=3 * small.ByteSize())
    for name in "abc":
        store.put(name, small)
    store.get("a")  # now the most recently used
    store.put("d", small)
    assert store.bytes <= store.max_bytes and len(store) == 3
    with pytest.raises(NotFound, match="problem_ref: unknown 'b'"):
        store.get("b")
    assert store.get("a") is small
    with pytest.raises(ResourceExhausted, match="problem: "):
        store.put("huge", stdio_problem(100))


async def test_health_watch_and_reflection() -> None:
    async with Running(FakeEngine()) as s:
        assert await s.health() == SERVING
        assert await s.health("") == SERVING
        watch = health_pb2_grpc.HealthStub(s.channel).Watch(
            health_pb2.HealthCheckRequest(service="rlfleet.v1.Verifier"), timeout=10
        )
        async for reply in watch:  # a server-streaming call through the interceptor
            assert reply.status == SERVING
            break
        watch.cancel()

        stub = reflection_pb2_grpc.ServerReflectionStub(s.channel)
        ask = [reflection_pb2.ServerReflectionRequest(list_services="")]
        names: list[str] = []
        async for reply in stub.ServerReflectionInfo(iter(ask)):
            names = [svc.name for svc in reply.list_services_response.service]
        assert {"rlfleet.v1.Verifier", "grpc.health.v1.Health"} <= set(names)


async def test_metrics() -> None:
    async with Running(FakeEngine(capacity=2)) as s:
        for i in range(3):
            await s.stub.Verify(code_request(f"x{i}"))
        await s.stub.Verify(pb.VerifyRequest(id="m", math=pb.MathCase(completion="1", gold="1")))
        cases = "rlfleet_verifier_cases_total"
        assert s.metric(cases, kind="code", language="python", verdict="AC") == 3
        assert s.metric(cases, kind="math", language="", verdict="AC") == 1
        assert s.metric("rlfleet_verifier_case_seconds_count") == 4
        assert s.metric("rlfleet_verifier_queue_depth") == 0
        assert s.metric("rlfleet_verifier_busy_workers") == 0


async def test_busy_and_queue_gauges_while_running() -> None:
    gate = asyncio.Event()
    async with Running(FakeEngine(gate=gate, capacity=2)) as s:
        calls = [asyncio.ensure_future(s.stub.Verify(code_request(f"a{i}"))) for i in range(5)]
        await until(lambda: s.service.pending == 5, "five admitted")
        assert s.metric("rlfleet_verifier_busy_workers") == 2
        assert s.metric("rlfleet_verifier_queue_depth") == 3
        gate.set()
        await asyncio.gather(*calls)
        assert s.metric("rlfleet_verifier_queue_depth") == 0


SERVER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from prometheus_client import CollectorRegistry
    from rlfleet.sandbox.records import CaseResult, Verdict
    from rlfleet.grpc_server import ServerConfig, run_until_signalled
    from rlfleet.sandbox.servicer import ServiceConfig, build_verifier_server

    class SlowEngine:
        capacity = 1
        async def verify(self, case):
            print("engine: started", case.id, file=sys.stderr, flush=True)
            await asyncio.sleep(1.0)
            return CaseResult(id=case.id, verdict=Verdict.AC, passed=1, total=1, reward=1.0)

    async def main():
        config, registry = ServerConfig(port=0, grace_s=30), CollectorRegistry()
        srv, _ = build_verifier_server(config, ServiceConfig(), SlowEngine(), registry)
        await run_until_signalled(srv, config, registry, lambda line: print(line, file=sys.stderr, flush=True))

    asyncio.run(main())
    print("server: stopped", file=sys.stderr, flush=True)
    """
)


async def test_sigterm_drains_calls_in_flight_then_exits_clean() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVER_SCRIPT,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert "listening on 127.0.0.1:" in line, line
        target = line.rsplit(" ", 1)[1].strip()
        async with grpc.aio.insecure_channel(target) as channel:
            from rlfleet.v1 import verifier_pb2_grpc as pb_grpc

            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="rlfleet.v1.Verifier"), timeout=60
            )
            assert (await watch.read()).status == SERVING
            call = pb_grpc.VerifierStub(channel).Verify(code_request("inflight"), timeout=60)
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert "engine: started inflight" in line, line
            proc.send_signal(signal.SIGTERM)
            # Load balancers watching health learn first; the call in flight still finishes.
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            # Hang up the watch while the call in flight still holds the server open: a
            # watch left to the server's shutdown is cancelled there, and grpc prints that.
            watch.cancel()
            reply = await call
            assert (reply.id, reply.verdict) == ("inflight", pb.VERDICT_AC)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        rest = (await proc.stderr.read()).decode()
        assert "server: stopped" in rest and "Traceback" not in rest, rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_server_config_wants_both_tls_files_or_neither(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls"):
        ServerConfig(tls_cert=tmp_path / "cert.pem")


async def test_metrics_endpoint_serves_the_registry() -> None:
    async with Running(FakeEngine()) as s:
        await s.stub.Verify(code_request("x"))
        http = start_metrics(0, "127.0.0.1", s.registry)
        try:
            url = f"http://127.0.0.1:{http.server_port}/metrics"
            body = await asyncio.to_thread(lambda: urlopen(url, timeout=10).read().decode())
        finally:
            http.shutdown()
            http.server_close()
    assert 'rlfleet_verifier_cases_total{kind="code",language="python",verdict="AC"} 1.0' in body
    assert "rlfleet_verifier_busy_workers" in body


async def test_tls(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test certificate (apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    async with Running(FakeEngine(), tls_cert=cert, tls_key=key) as s:
        cfg = ClientConfig(tls_ca=cert, attempts=1)
        async with VerifierClient(s.target, cfg) as client:
            assert (await client.verify(code_case("tls"))).verdict is Verdict.AC
        with pytest.raises(grpc.aio.AioRpcError) as err:  # plaintext is refused
            await s.stub.Verify(code_request("plain"), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


# -- VerifyBatches: VerifyStream with several items per message ---------------------------


def batches(requests: list[pb.VerifyRequest], size: int) -> list[pb.VerifyBatch]:
    return [pb.VerifyBatch(requests=requests[i : i + size]) for i in range(0, len(requests), size)]


async def test_batches_answer_every_item_and_refusals_keep_the_stream_open() -> None:
    async with Running(FakeEngine(), batch_wait_s=0.05) as s:
        requests = [
            code_request("a"),
            pb.VerifyRequest(id="bad"),  # neither code nor math
            code_request("b"),
            *(code_request(f"s{i}") for i in range(20)),
        ]
        messages = [m async for m in s.stub.VerifyBatches(iter(batches(requests, 7)))]
        replies = [r for m in messages for r in m.responses]
        assert sorted(r.id for r in replies) == sorted(r.id for r in requests)
        assert {r.id: r.error_code for r in replies if r.error} == {
            "bad": pb.ERROR_CODE_INVALID_ARGUMENT
        }
        assert all(r.verdict == pb.VERDICT_AC for r in replies if r.id != "bad")
        # Results that finish together travel together.
        assert len(messages) < len(replies)


async def test_a_batch_that_does_not_decode_is_one_refusal_and_the_stream_goes_on() -> None:
    async with Running(FakeEngine()) as s:
        raw = s.channel.stream_stream("/rlfleet.v1.Verifier/VerifyBatches")
        good = pb.VerifyBatch(requests=[code_request("after")]).SerializeToString()
        messages = [
            pb.VerifyBatchResponse.FromString(m) async for m in raw(iter([b"\xff\xff", good]))
        ]
        replies = [r for m in messages for r in m.responses]
        assert [(r.id, r.error_code, r.error) for r in replies] == [
            ("", pb.ERROR_CODE_INVALID_ARGUMENT, "request: not a valid VerifyBatch message"),
            ("after", pb.ERROR_CODE_UNSPECIFIED, ""),
        ]


async def test_batch_backpressure_keeps_admitted_cases_bounded() -> None:
    # Every item of a batch takes its own slot: a batch bigger than the budget is taken in
    # part, and the rest waits in the server until slots free.
    gate = asyncio.Event()
    engine = FakeEngine(gate=gate)
    async with Running(engine, max_pending=4) as s:
        requests = [code_request(f"s{i}") for i in range(200)]
        call = s.stub.VerifyBatches(iter(batches(requests, 50)))
        await until(lambda: len(engine.seen) == 4, "the budget filled")
        for _ in range(20):
            await asyncio.sleep(0.01)
            assert len(engine.seen) == 4 and s.service.pending == 4
        gate.set()
        ids = [r.id async for m in call for r in m.responses]
        assert sorted(ids) == sorted(f"s{i}" for i in range(200))
        assert engine.peak <= 4


async def test_a_cancelled_batch_stream_gives_its_slots_back() -> None:
    gate = asyncio.Event()
    engine = FakeEngine(gate=gate)
    async with Running(engine, max_pending=3) as s:
        call = s.stub.VerifyBatches(iter(batches([code_request(f"s{i}") for i in range(10)], 5)))
        await until(lambda: len(engine.seen) == 3, "the budget filled")
        call.cancel()
        await until(lambda: len(engine.cancelled) == 3, "the stream's cases cancelled")
        await until(lambda: s.service.pending == 0, "pending back to zero")
        gate.set()
        replies = await asyncio.gather(*(s.stub.Verify(code_request(f"u{i}")) for i in range(3)))
        assert [r.verdict for r in replies] == [pb.VERDICT_AC] * 3


async def test_a_batch_stream_deadline_cancels_the_engine_tasks() -> None:
    engine = FakeEngine(gate=asyncio.Event())
    async with Running(engine) as s:
        call = s.stub.VerifyBatches(
            iter(batches([code_request("a"), code_request("b")], 2)), timeout=0.3
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            _ = [m async for m in call]
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: sorted(engine.cancelled) == ["a", "b"], "both cancelled")
        await until(lambda: s.service.pending == 0, "pending back to zero")


async def test_the_last_result_of_a_stream_ends_the_batch_wait() -> None:
    # The first result waits for company; once the second (the stream's last) is ready,
    # both go at once, not after the rest of the wait.
    gates = {"later": asyncio.Event()}
    async with Running(FakeEngine(gates=gates), batch_wait_s=30) as s:
        call = s.stub.VerifyBatches(
            iter(batches([code_request("first"), code_request("later")], 2)), timeout=10
        )
        messages = asyncio.ensure_future(_collect(call))
        await asyncio.sleep(0.2)
        assert not messages.done()  # "first" is held for the batch wait
        gates["later"].set()
        assert [[r.id for r in m.responses] for m in await messages] == [["first", "later"]]


async def test_a_full_batch_ends_the_batch_wait() -> None:
    # batch_max results ready go at once while other cases of the stream still run.
    gates = {"slow": asyncio.Event()}
    async with Running(FakeEngine(gates=gates), batch_wait_s=30, batch_max=3) as s:
        requests = [*(code_request(f"q{i}") for i in range(3)), code_request("slow")]
        call = s.stub.VerifyBatches(iter(batches(requests, 4)), timeout=10)
        first = await asyncio.wait_for(call.read(), 5)
        assert sorted(r.id for r in first.responses) == ["q0", "q1", "q2"]
        gates["slow"].set()
        second = await asyncio.wait_for(call.read(), 5)
        assert [r.id for r in second.responses] == ["slow"]
        assert await call.read() == grpc.aio.EOF


async def _collect(call: Any) -> list[pb.VerifyBatchResponse]:
    return [m async for m in call]


def test_the_batch_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="batch_max"):
        ServiceConfig(batch_max=0)
    with pytest.raises(ValueError, match="batch_wait_s"):
        ServiceConfig(batch_wait_s=-1)


async def test_a_lone_result_is_not_held_for_the_batch_wait() -> None:
    # With nothing else running in its stream, a result goes at once, whatever the wait.
    async with Running(FakeEngine(), batch_wait_s=30) as s:
        call = s.stub.VerifyBatches(iter(batches([code_request("only")], 1)), timeout=10)
        assert [r.id async for m in call for r in m.responses] == ["only"]
