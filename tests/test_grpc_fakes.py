"""Shared by the gRPC tests: a fake engine, an in-process server on a free loopback port, a
bare server with canned answers, and request builders. (No tests here.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from rlfleet.grpc_server import ServerConfig
from rlfleet.sandbox.records import Case, CaseResult, CodeCase, StdioTest, Verdict
from rlfleet.sandbox.servicer import ServiceConfig, build_verifier_server
from rlfleet.v1 import verifier_pb2 as pb
from rlfleet.v1 import verifier_pb2_grpc as pb_grpc


class FakeEngine:
    """Answers ``verdict`` after ``delay`` (and once ``gate``, or the case's own entry in
    ``gates``, is set); records what it ran and every cancellation it saw."""

    def __init__(
        self,
        *,
        delay: float = 0.0,
        verdict: Verdict = Verdict.AC,
        capacity: int = 2,
        gate: asyncio.Event | None = None,
        fail: Exception | None = None,
        gates: dict[str, asyncio.Event] | None = None,
    ) -> None:
        self.delay = delay
        self.verdict = verdict
        self._capacity = capacity
        self.gate = gate
        self.fail = fail
        self.gates = gates or {}
        self.seen: list[str] = []
        self.cancelled: list[str] = []
        self.running = 0
        self.peak = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    async def verify(self, case: Case) -> CaseResult:
        self.seen.append(case.id)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if case.id in self.gates:
                await self.gates[case.id].wait()
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled.append(case.id)
            raise
        finally:
            self.running -= 1
        if self.fail is not None:
            raise self.fail
        total = len(case.tests) if isinstance(case, CodeCase) else 1
        ok = self.verdict is Verdict.AC
        return CaseResult(
            id=case.id,
            verdict=self.verdict,
            passed=total if ok else 0,
            total=total,
            reward=1.0 if ok else 0.0,
            extracted=None if isinstance(case, CodeCase) else "42",
        )


class Running:
    """``async with Running(engine) as s``: a started server, ``s.stub`` talks to it."""

    def __init__(self, engine: Any, **config: Any) -> None:
        self.engine = engine
        self.registry = CollectorRegistry()
        service_keys = set(ServiceConfig.__dataclass_fields__)
        server_args = {"port": 0, **{k: v for k, v in config.items() if k not in service_keys}}
        server = ServerConfig(**server_args)
        service = ServiceConfig(**{k: v for k, v in config.items() if k in service_keys})
        self.srv, self.service = build_verifier_server(server, service, engine, self.registry)
        self.target = f"127.0.0.1:{self.srv.port}"

    async def __aenter__(self) -> Running:
        await self.srv.start()
        self.channel = grpc.aio.insecure_channel(self.target)
        self.stub = pb_grpc.VerifierStub(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.srv.server.stop(0)

    async def health(self, service: str = "rlfleet.v1.Verifier") -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return int(reply.status)

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


class CannedVerifier(pb_grpc.VerifierServicer):
    """A bare servicer (no engine, no validation) that answers every case with ``reply``
    under the case's id: stands in for a server built from another version of the proto."""

    def __init__(self, reply: pb.VerifyResponse) -> None:
        self.reply = reply
        self.seen: list[str] = []

    def _answer(self, request: pb.VerifyRequest) -> pb.VerifyResponse:
        self.seen.append(request.id)
        out = pb.VerifyResponse()
        out.CopyFrom(self.reply)
        out.id = request.id
        return out

    async def Verify(
        self, request: pb.VerifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyResponse:
        return self._answer(request)

    async def VerifyStream(
        self, request_iterator: AsyncIterator[pb.VerifyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.VerifyResponse]:
        async for request in request_iterator:
            yield self._answer(request)


class RunningCanned:
    """``async with RunningCanned(reply) as s``: a ``CannedVerifier`` at ``s.target``."""

    def __init__(self, reply: pb.VerifyResponse, servicer: CannedVerifier | None = None) -> None:
        self.servicer = servicer or CannedVerifier(reply)
        self.server = grpc.aio.server()
        pb_grpc.add_VerifierServicer_to_server(self.servicer, self.server)
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    async def __aenter__(self) -> RunningCanned:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(0)


async def until(predicate: Callable[[], bool], what: str, tries: int = 1000) -> None:
    """Wait (bounded) for something the server does asynchronously."""
    for _ in range(tries):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def stdio_problem(tests: int = 1) -> pb.Problem:
    return pb.Problem(stdio_tests=[pb.StdioTest(stdin=str(i), stdout=str(i)) for i in range(tests)])


def code_request(case_id: str, tests: int = 1, language: str = "python") -> pb.VerifyRequest:
    return pb.VerifyRequest(
        id=case_id,
        code=pb.CodeCase(language=language, code="print(input())", problem=stdio_problem(tests)),
    )


def code_case(case_id: str, tests: int = 1) -> CodeCase:
    return CodeCase(
        id=case_id,
        language="python",
        code="print(input())",
        tests=tuple(StdioTest(stdin=str(i), stdout=str(i)) for i in range(tests)),
    )
