"""The verifier gRPC service: a thin servicer over the engine.

Admission control lives here: at most ``max_pending`` cases are running or waiting at once.
A unary call beyond that is refused (RESOURCE_EXHAUSTED: retry later or on another server);
a stream is back-pressured instead: the server stops reading the client's requests until a
result has been sent. Deadlines and client cancellation cancel the engine's work, which
frees the sandbox worker at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rlfleet.sandbox.cases import CaseError
from rlfleet.sandbox.convert import problem_ref, request_to_case, result_to_response
from rlfleet.sandbox.records import Case, CaseResult
from rlfleet.serving import NotFound, Overloaded, Undecodable, status_for
from rlfleet.v1 import verifier_pb2 as pb
from rlfleet.v1 import verifier_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
KEEP_MIN_TESTS = 8
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Verifier"].full_name


class Engine(Protocol):
    async def verify(self, case: Case) -> CaseResult: ...

    @property
    def capacity(self) -> int: ...


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    max_pending: int | None = None
    """Cases running or waiting at once (default: 4 x workers + 1024)."""
    problem_store_mb: int = 512
    """Registered problems kept (least recently used dropped first)."""


class ProblemStore:
    """Registered test suites by content hash, bounded in bytes (LRU)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, pb.Problem] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.bytes = 0

    def put(self, problem: pb.Problem) -> str:
        ref = problem_ref(problem)
        size = problem.ByteSize()
        if size > self.max_bytes:
            raise Overloaded(f"problem: {size} bytes, more than the store holds")
        if ref in self._items:
            self._items.move_to_end(ref)
            return ref
        self._items[ref] = problem
        self._sizes[ref] = size
        self.bytes += size
        while self.bytes > self.max_bytes:
            old, _ = self._items.popitem(last=False)
            self.bytes -= self._sizes.pop(old)
        return ref

    def get(self, ref: str) -> pb.Problem:
        try:
            self._items.move_to_end(ref)
            return self._items[ref]
        except KeyError:
            raise NotFound(f"problem_ref: unknown {ref!r} (register it first)") from None


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "rlfleet_verifier_requests",
            "Cases received by outcome",
            ["method", "outcome"],
            registry=registry,
        )
        self.cases = Counter(
            "rlfleet_verifier_cases",
            "Cases verified by kind and verdict",
            ["kind", "language", "verdict"],
            registry=registry,
        )
        self.seconds = Histogram(
            "rlfleet_verifier_case_seconds",
            "Time from admission to result, per case",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
            registry=registry,
        )
        self.pending = Gauge(
            "rlfleet_verifier_queue_depth",
            "Cases admitted and not finished (running or waiting)",
            registry=registry,
        )
        self.rejected = Counter(
            "rlfleet_verifier_rejected", "Cases refused, by reason", ["reason"], registry=registry
        )
        self.problems = Gauge(
            "rlfleet_verifier_problem_store_bytes",
            "Bytes of registered problems held",
            registry=registry,
        )


class VerifierService(pb_grpc.VerifierServicer):
    def __init__(
        self, engine: Engine, registry: CollectorRegistry, config: ServiceConfig = ServiceConfig()
    ) -> None:
        self.engine = engine
        self.max_pending = config.max_pending or 4 * engine.capacity + 1024
        self.problems = ProblemStore(config.problem_store_mb << 20)
        self.metrics = ServiceMetrics(registry)
        self._slots = asyncio.Semaphore(self.max_pending)
        self.pending = 0

    def _case(self, req: pb.VerifyRequest) -> Case:
        case = request_to_case(req, self.problems)
        # Keep large inline suites: later samples of the problem can then come by reference.
        if req.WhichOneof("case") == "code" and req.code.WhichOneof("suite") == "problem":
            problem = req.code.problem
            if len(problem.stdio_tests) + len(problem.call_tests) >= KEEP_MIN_TESTS:
                self.problems.put(problem)
                self.metrics.problems.set(self.problems.bytes)
        return case

    async def _verify(self, case: Case) -> CaseResult:
        """Run one admitted case (its slot is held by the caller)."""
        self.pending += 1
        self.metrics.pending.set(self.pending)
        t0 = time.perf_counter()
        try:
            result = await self.engine.verify(case)
        finally:
            self.pending -= 1
            self.metrics.pending.set(self.pending)
        self.metrics.seconds.observe(time.perf_counter() - t0)
        kind = "math" if not hasattr(case, "language") else "code"
        language = getattr(case, "language", "")
        self.metrics.cases.labels(kind, language, result.verdict.value).inc()
        return result

    async def Verify(
        self,
        request: pb.VerifyRequest,  # noqa: N802 - gRPC method name
        context: grpc.aio.ServicerContext,
    ) -> pb.VerifyResponse:
        case = self._case(request)
        if self._slots.locked():
            self.metrics.rejected.labels("queue_full").inc()
            raise Overloaded(f"queue full ({self.max_pending} cases pending): retry later")
        async with self._slots:
            self.metrics.requests.labels("Verify", "admitted").inc()
            remaining = context.time_remaining()
            if remaining is None:
                result = await self._verify(case)
            else:
                try:
                    result = await asyncio.wait_for(self._verify(case), remaining)
                except TimeoutError:
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        return result_to_response(result)

    async def VerifyStream(
        self,
        request_iterator: AsyncIterator[pb.VerifyRequest | Undecodable],  # noqa: N802
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.VerifyResponse]:
        out: asyncio.Queue[pb.VerifyResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def run(case: Case) -> None:
            try:
                resp = result_to_response(await self._verify(case))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.exception("case %s failed", case.id)
                resp = _error_response(case.id, e)
            out.put_nowait(resp)

        async def read() -> None:
            async for item in request_iterator:
                # Back-pressure: no more requests are read while the budget is spent. A slot
                # is given back when a response has been handed to gRPC, not before.
                await self._slots.acquire()
                try:
                    if isinstance(item, Undecodable):
                        raise CaseError("request", "not a valid VerifyRequest message")
                    case = self._case(item)
                except Exception as e:
                    out.put_nowait(_error_response(getattr(item, "id", ""), e))
                    self.metrics.requests.labels("VerifyStream", "invalid").inc()
                    continue
                self.metrics.requests.labels("VerifyStream", "admitted").inc()
                task = asyncio.create_task(run(case))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            out.put_nowait(None)

        reader = asyncio.create_task(read())
        reading = True
        try:
            while reading or tasks or not out.empty():
                item = await out.get()
                if item is None:
                    reading = False
                    await reader  # surfaces a broken request stream as an error
                    continue
                try:
                    yield item
                finally:
                    self._slots.release()
        finally:
            reader.cancel()
            for t in list(tasks):
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def RegisterProblem(
        self,
        request: pb.Problem,  # noqa: N802
        context: grpc.aio.ServicerContext,
    ) -> pb.ProblemRef:
        if not request.stdio_tests and not request.call_tests:
            raise CaseError("tests", "empty")
        ref = self.problems.put(request)
        self.metrics.problems.set(self.problems.bytes)
        return pb.ProblemRef(sha256=ref)


def _error_response(case_id: str, exc: Exception) -> pb.VerifyResponse:
    code, message = status_for(exc)
    return pb.VerifyResponse(id=case_id, error=message, error_code=code.name)
