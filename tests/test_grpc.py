"""The verifier service over real gRPC on loopback: contract, errors, admission control,
deadlines and cancellation, streaming back-pressure, problem registration, the client's
load balancing and retries, health and reflection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from rlfleet.sandbox.client import ClientConfig, VerifierClient
from rlfleet.sandbox.records import Case, CaseResult, CodeCase, StdioTest, Verdict
from rlfleet.sandbox.serve import ServeConfig, build
from rlfleet.v1 import verifier_pb2 as pb
from rlfleet.v1 import verifier_pb2_grpc as pb_grpc


class FakeEngine:
    """Answers AC after `delay`; records cancellations and what it ran."""

    def __init__(
        self, delay: float = 0.0, verdict: Verdict = Verdict.AC, capacity: int = 2
    ) -> None:
        self.delay = delay
        self.verdict = verdict
        self.capacity = capacity
        self.seen: list[str] = []
        self.cancelled = 0
        self.running = 0
        self.peak = 0

    async def verify(self, case: Case) -> CaseResult:
        self.seen.append(case.id)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        return CaseResult(
            id=case.id,
            verdict=self.verdict,
            passed=1,
            total=1,
            reward=1.0 if self.verdict is Verdict.AC else 0.0,
        )


class Running:
    def __init__(self, engine: Any, max_pending: int | None = None) -> None:
        self.engine = engine
        self.registry = CollectorRegistry()
        self.srv, _, self.service = build(
            ServeConfig(port=0, max_pending=max_pending), engine, self.registry
        )

    async def __aenter__(self) -> Running:
        await self.srv.server.start()
        await self.srv.set_serving(True)
        self.target = f"127.0.0.1:{self.srv.port}"
        self.channel = grpc.aio.insecure_channel(self.target)
        self.stub = pb_grpc.VerifierStub(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.srv.server.stop(0)

    async def health(self) -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service="rlfleet.v1.Verifier"))
        return reply.status


def code_request(case_id: str, tests: int = 1, language: str = "python") -> pb.VerifyRequest:
    problem = pb.Problem(stdio_tests=[pb.StdioTest(stdin="1", stdout="1")] * tests)
    return pb.VerifyRequest(
        id=case_id, code=pb.CodeCase(language=language, code="print(input())", problem=problem)
    )


async def test_unary_with_real_engine_code_and_math() -> None:
    from rlfleet.sandbox.engine import Engine, EngineConfig

    engine = await Engine.start(EngineConfig(workers=2))
    try:
        async with Running(engine) as s:
            r = await s.stub.Verify(code_request("c1", tests=3))
            assert (r.id, r.verdict, r.passed, r.total, r.reward) == ("c1", "AC", 3, 3, 1.0)
            assert len(r.tests) == 3 and all(t.memory_mb > 0 for t in r.tests)
            m = await s.stub.Verify(
                pb.VerifyRequest(
                    id="m1", math=pb.MathCase(completion="\\boxed{\\frac12}", gold="0.5")
                )
            )
            assert (m.verdict, m.extracted) == ("AC", "\\frac12")
            call = pb.VerifyRequest(
                id="f1",
                code=pb.CodeCase(
                    language="python",
                    code="def f(a, b):\n    return (a, b)\n",
                    problem=pb.Problem(
                        fn_name="f",
                        call_tests=[pb.CallTest(args_json="[1, 2]", expected_json="[1, 2]")],
                    ),
                ),
            )
            assert (await s.stub.Verify(call)).verdict == "AC"
    finally:
        await engine.close()


@pytest.mark.parametrize(
    ("request_pb", "field"),
    [
        (pb.VerifyRequest(id="x"), "case"),
        (pb.VerifyRequest(id="x", code=pb.CodeCase(language="python", code="1")), "suite"),
        (
            pb.VerifyRequest(
                id="x",
                code=pb.CodeCase(
                    code="1", problem=pb.Problem(stdio_tests=[pb.StdioTest(stdout="1")])
                ),
            ),
            "language",
        ),
        (
            pb.VerifyRequest(
                code=pb.CodeCase(
                    language="python",
                    code="1",
                    problem=pb.Problem(stdio_tests=[pb.StdioTest(stdout="1")]),
                )
            ),
            "id",
        ),
        (
            pb.VerifyRequest(
                id="x",
                code=pb.CodeCase(
                    language="cobol",
                    code="1",
                    problem=pb.Problem(stdio_tests=[pb.StdioTest(stdout="1")]),
                ),
            ),
            "language",
        ),
        (
            pb.VerifyRequest(
                id="x",
                code=pb.CodeCase(
                    language="python",
                    code="1",
                    problem=pb.Problem(
                        fn_name="f", call_tests=[pb.CallTest(args_json="[1,", expected_json="1")]
                    ),
                ),
            ),
            "tests[0].args_json",
        ),
        (
            pb.VerifyRequest(
                id="x",
                code=pb.CodeCase(
                    language="python",
                    code="x" * (2 << 20),
                    problem=pb.Problem(stdio_tests=[pb.StdioTest()]),
                ),
            ),
            "code",
        ),
        (pb.VerifyRequest(id="x", math=pb.MathCase(completion="1")), "gold"),
    ],
)
async def test_invalid_requests_name_the_field(request_pb: pb.VerifyRequest, field: str) -> None:
    async with Running(FakeEngine()) as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.Verify(request_pb)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith(f"{field}: ")
        assert await s.health() == health_pb2.HealthCheckResponse.SERVING


async def test_garbage_bytes_and_oversized_messages() -> None:
    async with Running(FakeEngine()) as s:
        raw = s.channel.unary_unary("/rlfleet.v1.Verifier/Verify")
        for junk in (b"\xff\xfe\xfd\x00garbage", bytes(range(256)) * 4):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(junk)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid message" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw(b"\x0a" + b"\xff" * 10 + b"x" * (65 << 20))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        streamed = [
            r
            async for r in s.channel.stream_stream("/rlfleet.v1.Verifier/VerifyStream")(
                iter([b"\xff\xffjunk"])
            )
        ]
        assert len(streamed) == 1
        assert b"INVALID_ARGUMENT" in streamed[0]
        assert await s.health() == health_pb2.HealthCheckResponse.SERVING
        assert (await s.stub.Verify(code_request("ok"))).verdict == "AC"


async def test_queue_full_is_resource_exhausted() -> None:
    engine = FakeEngine(delay=0.5)
    async with Running(engine, max_pending=2) as s:
        first = [asyncio.ensure_future(s.stub.Verify(code_request(f"a{i}"))) for i in range(2)]
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.Verify(code_request("over"))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert [r.verdict for r in await asyncio.gather(*first)] == ["AC", "AC"]


async def test_deadline_and_cancel_stop_the_engine_work() -> None:
    engine = FakeEngine(delay=30)
    async with Running(engine) as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.Verify(code_request("slow"), timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        call = s.stub.Verify(code_request("gone"))
        await asyncio.sleep(0.2)
        call.cancel()
        for _ in range(50):
            if engine.cancelled == 2:
                break
            await asyncio.sleep(0.05)
        assert engine.cancelled == 2
        assert s.service.pending == 0


async def test_stream_returns_results_as_they_finish_with_backpressure() -> None:
    engine = FakeEngine(delay=0.01)
    async with Running(engine, max_pending=4) as s:
        sent = 0

        async def requests() -> AsyncIterator[pb.VerifyRequest]:
            nonlocal sent
            for i in range(60):
                sent += 1
                yield code_request(f"s{i}")
                if i == 10:
                    yield pb.VerifyRequest(id="bad")

        ids, errors = [], []
        async for r in s.stub.VerifyStream(requests()):
            (errors if r.error else ids).append(r.id)
        assert sorted(ids) == sorted(f"s{i}" for i in range(60))
        assert errors == ["bad"]
        assert engine.peak <= 4  # never more in flight than the budget


async def test_problem_registration_and_refs() -> None:
    async with Running(FakeEngine()) as s:
        problem = pb.Problem(
            stdio_tests=[pb.StdioTest(stdin=str(i), stdout=str(i)) for i in range(50)]
        )
        ref = (await s.stub.RegisterProblem(problem)).sha256
        assert ref == (await s.stub.RegisterProblem(problem)).sha256 and len(ref) == 64
        r = await s.stub.Verify(
            pb.VerifyRequest(
                id="r", code=pb.CodeCase(language="python", code="print(input())", problem_ref=ref)
            )
        )
        assert r.verdict == "AC"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.Verify(
                pb.VerifyRequest(
                    id="r", code=pb.CodeCase(language="python", code="x", problem_ref="0" * 64)
                )
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "problem_ref" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.RegisterProblem(pb.Problem())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def big_case(case_id: str, n: int = 20) -> CodeCase:
    return CodeCase(
        id=case_id,
        language="python",
        code="print(input())",
        tests=tuple(StdioTest(stdin=str(i), stdout=str(i)) for i in range(n)),
    )


async def test_client_round_robin_and_se_retried_elsewhere() -> None:
    good, bad = FakeEngine(), FakeEngine(verdict=Verdict.SE)
    async with Running(good) as a, Running(bad) as b:
        cfg = ClientConfig(backoff_s=0.001, attempts=6)
        async with VerifierClient(f"{a.target},{b.target}", cfg) as client:
            results = [await client.verify(big_case(f"c{i}", n=1)) for i in range(8)]
            assert all(r.verdict is Verdict.AC for r in results)
            assert good.seen and bad.seen  # both servers got calls; SEs were retried
            streamed = [
                r async for r in client.verify_many(big_case(f"m{i}", n=1) for i in range(6))
            ]
            assert sorted(r.id for r in streamed) == sorted(f"m{i}" for i in range(6))
            assert all(r.verdict is Verdict.AC for r in streamed)


async def test_client_sends_large_suites_once_per_server() -> None:
    e1, e2 = FakeEngine(), FakeEngine()
    async with Running(e1) as a, Running(e2) as b:
        cfg = ClientConfig(register_min_tests=5, backoff_s=0.001)
        async with VerifierClient(f"{a.target},{b.target}", cfg) as client:
            for i in range(10):
                assert (await client.verify(big_case(f"c{i}"))).verdict is Verdict.AC
            held = {a.service.problems.bytes, b.service.problems.bytes}
            assert all(size > 0 for size in held)  # each server keeps the suite
            # Servers that lost their problems: the client sends them inline again.
            a.service.problems = type(a.service.problems)(1 << 20)
            b.service.problems = type(b.service.problems)(1 << 20)
            assert (await client.verify(big_case("again"))).verdict is Verdict.AC
            streamed = [r async for r in client.verify_many(big_case(f"m{i}") for i in range(6))]
            assert sorted(r.id for r in streamed) == sorted(f"m{i}" for i in range(6))
        assert len(e1.seen) + len(e2.seen) == 17


async def test_reflection_lists_the_services() -> None:
    async with Running(FakeEngine()) as s:
        stub = reflection_pb2_grpc.ServerReflectionStub(s.channel)

        async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names = []
        async for reply in stub.ServerReflectionInfo(ask()):
            names = [svc.name for svc in reply.list_services_response.service]
        assert "rlfleet.v1.Verifier" in names
        assert "grpc.health.v1.Health" in names


async def test_metrics_count_cases() -> None:
    async with Running(FakeEngine()) as s:
        for i in range(3):
            await s.stub.Verify(code_request(f"x{i}"))
        value = s.registry.get_sample_value(
            "rlfleet_verifier_cases_total", {"kind": "code", "language": "python", "verdict": "AC"}
        )
        assert value == 3
        assert s.registry.get_sample_value("rlfleet_verifier_queue_depth") == 0
        json.dumps(value)
