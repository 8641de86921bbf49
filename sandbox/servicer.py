"""The verifier gRPC service: a thin servicer over the engine.

Requests become typed records at the edge (``convert.request_to_case``, the same validation
as the CLI's JSONL, so errors name the field: ``tests[3].stdout: missing``), the engine
judges them, results go back as protos.

Admission control lives here: at most ``max_pending`` cases are running or waiting at once,
over all calls. A unary call beyond that is refused (RESOURCE_EXHAUSTED: retry later or on
another server). A stream is back-pressured instead of refused: while the budget is spent
the server stops reading that stream's requests, so HTTP/2 flow control slows the client,
and a case's slot is only given back once its response has been handed to gRPC, so a client
that does not read its results cannot make us buffer them. Deadlines and client
cancellation cancel the engine's work, which frees the sandbox worker at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rlfleet.grpc_server import (
    BadRequest,
    NotFound,
    QueueFull,
    ResourceExhausted,
    Server,
    ServerConfig,
    Undecodable,
    build_server,
    status_for,
)
from rlfleet.sandbox.cases import CaseError
from rlfleet.sandbox.convert import (
    error_code_to_pb,
    problem_ref,
    request_to_case,
    result_to_response,
)
from rlfleet.sandbox.records import Case, CaseResult, CodeCase
from rlfleet.v1 import verifier_pb2 as pb
from rlfleet.v1 import verifier_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Verifier"].full_name
# Requests above this size are converted (JSON decoding, hashing) in a thread, so one big
# suite does not stall every other call on the event loop.
INLINE_CONVERT_BYTES = 256 << 10
T = TypeVar("T")
M = TypeVar("M")


class Engine(Protocol):
    """What the service needs from the sandbox engine (``sandbox.engine.Engine``)."""

    async def verify(self, case: Case) -> CaseResult: ...

    @property
    def capacity(self) -> int: ...


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    max_pending: int | None = None
    """Cases running or waiting at once, over all calls (None: 4 x workers + 1024)."""
    problem_store_mb: int = 512
    """Bytes of registered problems kept; the least recently used are dropped first."""
    keep_inline_tests: int = 8
    """Inline suites with at least this many tests are stored too, so that a client that
    got NOT_FOUND for a ref and resent the suite inline can use the ref again."""
    batch_wait_s: float = 0.025
    """A VerifyBatches response waits up to this long for more results while cases of its
    stream are still running: fewer, fuller messages (each costs far more CPU, on both sides,
    than a small case), each result late by this much at most. The wait ends early once the
    stream has nothing left running (its last result is never held) or ``batch_max``
    results are ready. 0: send as soon as one is ready."""
    batch_max: int = 64
    """Results ready that end a VerifyBatches response's wait (the client's batch size)."""

    def __post_init__(self) -> None:
        if self.batch_wait_s < 0:
            raise ValueError("batch_wait_s: must be >= 0")
        if self.batch_max < 1:
            raise ValueError("batch_max: must be >= 1")


class ProblemStore:
    """Registered test suites by content hash, bounded in bytes (LRU)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, tuple[pb.Problem, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, ref: str, problem: pb.Problem) -> None:
        """Keep ``problem`` under ``ref`` (``convert.problem_ref`` of its validated case)."""
        if ref in self._items:
            self._items.move_to_end(ref)
            return
        size = problem.ByteSize()
        if size > self.max_bytes:
            raise ResourceExhausted(
                f"problem: {size} bytes, more than the {self.max_bytes} the store holds"
            )
        self._items[ref] = (problem, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped

    def get(self, ref: str) -> pb.Problem:
        try:
            self._items.move_to_end(ref)
        except KeyError:
            raise NotFound(f"problem_ref: unknown {ref!r} (register it again)") from None
        return self._items[ref][0]


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.cases = Counter(
            "rlfleet_verifier_cases",
            "Cases verified (kind code, math) and programs run (kind run: /run_code), by kind, "
            "language and verdict",
            ["kind", "language", "verdict"],
            registry=registry,
        )
        self.seconds = Histogram(
            "rlfleet_verifier_case_seconds",
            "Time from admission to result, per case",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60),
            registry=registry,
        )
        self.queue_depth = Gauge(
            "rlfleet_verifier_queue_depth",
            "Cases admitted and waiting for a worker",
            registry=registry,
        )
        self.busy = Gauge(
            "rlfleet_verifier_busy_workers",
            "Workers occupied by cases this service admitted",
            registry=registry,
        )
        self.rejected = Counter(
            "rlfleet_verifier_rejected",
            "Requests refused, by reason",
            ["reason"],
            registry=registry,
        )
        self.problem_bytes = Gauge(
            "rlfleet_verifier_problem_store_bytes",
            "Bytes of registered problems held",
            registry=registry,
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, QueueFull):
        return "queue_full"
    if isinstance(exc, ResourceExhausted):
        return "too_large"
    if isinstance(exc, NotFound):
        return "unknown_problem"
    if isinstance(exc, BadRequest):
        return "invalid"
    return "internal"


class VerifierService(pb_grpc.VerifierServicer):
    def __init__(
        self, engine: Engine, registry: CollectorRegistry, config: ServiceConfig = ServiceConfig()
    ) -> None:
        self.engine = engine
        self.config = config
        self.max_pending = config.max_pending or 4 * engine.capacity + 1024
        self.problems = ProblemStore(config.problem_store_mb << 20)
        self.metrics = ServiceMetrics(registry)
        self.pending = 0
        """Cases handed to the engine and not finished."""
        self._slots = asyncio.Semaphore(self.max_pending)
        # Read when scraped, not set per case.
        self.metrics.busy.set_function(lambda: min(self.pending, engine.capacity))
        self.metrics.queue_depth.set_function(
            lambda: self.pending - min(self.pending, engine.capacity)
        )

    # -- edge: proto -> record --------------------------------------------------------------

    async def _case(self, req: pb.VerifyRequest, keep: bool = True) -> Case:
        """Validate a request into a record; refusals are counted and raised typed.

        With ``keep``, large inline suites are stored as if registered.
        """
        try:
            return await self._convert(req, keep)
        except CaseError as e:
            self.metrics.rejected.labels("invalid").inc()
            raise BadRequest(e.field, e.message) from None
        except Exception as e:
            self.metrics.rejected.labels(_reason(e)).inc()
            raise

    async def _convert(self, req: pb.VerifyRequest, keep: bool) -> Case:
        code = req.code if req.WhichOneof("case") == "code" else None
        suite = code.WhichOneof("suite") if code is not None else None
        # Refs are resolved here, on the loop thread: the store is not thread-safe.
        problems: dict[str, pb.Problem] = {}
        if code is not None and suite == "problem_ref":
            problems[code.problem_ref] = self.problems.get(code.problem_ref)
        if req.ByteSize() > INLINE_CONVERT_BYTES:
            case = await asyncio.to_thread(request_to_case, req, problems)
        else:
            case = request_to_case(req, problems)
        if code is not None and suite == "problem":
            # proto3 tells "" from unset only when asked (convert.py does not ask).
            for i, t in enumerate(code.problem.stdio_tests):
                if not t.HasField("stdout"):
                    raise CaseError(f"tests[{i}].stdout", "missing")
        if (
            keep
            and code is not None
            and suite == "problem"
            and isinstance(case, CodeCase)
            and len(case.tests) >= self.config.keep_inline_tests
        ):
            await self._store(code.problem, case)
        return case

    async def _store(self, problem: pb.Problem, case: CodeCase) -> str:
        """Keep ``problem``, which validated into ``case``, under its content hash."""
        if problem.ByteSize() > INLINE_CONVERT_BYTES:
            ref = await asyncio.to_thread(problem_ref, case)
        else:
            ref = problem_ref(case)
        self.problems.put(ref, problem)
        self.metrics.problem_bytes.set(self.problems.bytes)
        return ref

    # -- running a case ---------------------------------------------------------------------

    async def _pending(self, work: Awaitable[T]) -> T:
        """Await admitted work (the caller holds its slot), counted as pending and timed."""
        self.pending += 1
        t0 = time.perf_counter()
        try:
            result = await work
        finally:
            self.pending -= 1
        self.metrics.seconds.observe(time.perf_counter() - t0)
        return result

    async def admitted(self, work: Callable[[], Awaitable[T]], wait_s: float = 0.0) -> T:
        """Run ``work`` as a unary call runs a case, for the service's other doors (HTTP
        ``/run_code``), counted in the queue depth, busy workers and case seconds. While
        ``max_pending`` cases are pending it waits up to ``wait_s`` for a slot (0: none),
        then is refused with ``QueueFull``."""
        if self._slots.locked():
            try:
                if wait_s <= 0:
                    raise TimeoutError
                await asyncio.wait_for(self._slots.acquire(), wait_s)
            except TimeoutError:
                self.metrics.rejected.labels("queue_full").inc()
                waited = f" for {wait_s:g} s" if wait_s > 0 else ""
                raise QueueFull(
                    f"queue full ({self.max_pending} cases pending{waited}): retry later"
                ) from None
        else:
            await self._slots.acquire()
        try:
            return await self._pending(work())
        finally:
            self._slots.release()

    async def _verify(self, case: Case) -> CaseResult:
        """Run one admitted case (the caller holds its slot)."""
        result = await self._pending(self.engine.verify(case))
        if isinstance(case, CodeCase):
            self.metrics.cases.labels("code", case.language, result.verdict.value).inc()
        else:
            self.metrics.cases.labels("math", "", result.verdict.value).inc()
        return result

    # -- RPCs -------------------------------------------------------------------------------

    async def Verify(
        self, request: pb.VerifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyResponse:
        case = await self._case(request)
        if self._slots.locked():
            self.metrics.rejected.labels("queue_full").inc()
            raise QueueFull(f"queue full ({self.max_pending} cases pending): retry later")
        async with self._slots:
            # gRPC cancels this handler when the client cancels; the deadline is enforced
            # here as well so the engine's work stops even if the cancel arrives late.
            remaining = context.time_remaining()
            try:
                result = await asyncio.wait_for(self._verify(case), remaining)
            except TimeoutError:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        return result_to_response(result)

    async def VerifyStream(
        self,
        request_iterator: AsyncIterator[pb.VerifyRequest | Undecodable],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.VerifyResponse]:
        # (aclosing: the inner generator's cleanup runs when this one is closed, not later.)
        stream = self._stream(request_iterator, _one_item, "VerifyRequest", wait_s=0.0)
        async with aclosing(stream) as lists:
            async for ready in lists:
                for response in ready:
                    yield response

    async def VerifyBatches(
        self,
        request_iterator: AsyncIterator[pb.VerifyBatch | Undecodable],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.VerifyBatchResponse]:
        wait_s = self.config.batch_wait_s
        stream = self._stream(request_iterator, _batch_items, "VerifyBatch", wait_s=wait_s)
        async with aclosing(stream) as lists:
            async for ready in lists:
                yield pb.VerifyBatchResponse(responses=ready)

    async def _stream(
        self,
        messages: AsyncIterator[M],
        items: Callable[[M], Iterable[pb.VerifyRequest | Undecodable]],
        message_type: str,
        wait_s: float,
    ) -> AsyncGenerator[list[pb.VerifyResponse], None]:
        """Both streaming calls: ``items`` gives the requests of each message read (a
        message that did not decode, ``message_type``, is one item refused). Yields the
        responses finished since its last yield (at least one each time), after waiting
        ``wait_s`` from the first for more while cases of the stream are running."""
        # Each request takes a slot before it is read further; the slot is given back once
        # the caller has handed its response to gRPC (when it asks for the next list).
        # ``held`` counts this stream's slots, so that whatever way the stream ends (client
        # gone, deadline, error) they all return to the pool.
        out: asyncio.Queue[pb.VerifyResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()
        held = 0
        running = 0  # cases of this stream without a response yet
        full = asyncio.Event()  # ends a batch wait: nothing running, or a batch's worth ready

        async def run(case: Case) -> None:
            nonlocal running
            try:
                resp = result_to_response(await self._verify(case))
            except Exception as e:
                log.error("case %r failed", case.id, exc_info=e)
                resp = _error_response(case.id, e)
            running -= 1
            out.put_nowait(resp)
            if not running or out.qsize() >= self.config.batch_max:
                full.set()

        async def read() -> None:
            nonlocal held, running
            try:
                async for message in messages:
                    for item in items(message):
                        await self._slots.acquire()
                        held += 1
                        try:
                            if isinstance(item, Undecodable):
                                self.metrics.rejected.labels("invalid").inc()
                                raise BadRequest("request", f"not a valid {message_type} message")
                            case = await self._case(item)
                        except Exception as e:
                            # One bad item is answered with an error; the stream goes on.
                            if status_for(e)[0] is grpc.StatusCode.INTERNAL:
                                log.error("stream item failed", exc_info=e)
                            out.put_nowait(_error_response(getattr(item, "id", ""), e))
                            continue
                        running += 1
                        task = asyncio.create_task(run(case))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
            finally:
                # Also when the request stream breaks: ``await reader`` then re-raises.
                out.put_nowait(None)

        reader = asyncio.create_task(read())
        reading = True
        try:
            while reading or tasks or not out.empty():
                got = [await out.get()]
                if wait_s > 0 and running and out.qsize() + 1 < self.config.batch_max:
                    full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(full.wait(), wait_s)
                while not out.empty():
                    got.append(out.get_nowait())
                ready = [r for r in got if r is not None]
                if ready:
                    yield ready
                    held -= len(ready)
                    for _ in ready:
                        self._slots.release()
                if len(ready) < len(got):
                    reading = False
                    await reader  # a broken request stream surfaces as the call's error
        finally:
            reader.cancel()
            for t in tasks:
                t.cancel()
            try:
                await asyncio.gather(reader, *tasks, return_exceptions=True)
            finally:
                for _ in range(held):
                    self._slots.release()

    async def RegisterProblem(
        self, request: pb.Problem, context: grpc.aio.ServicerContext
    ) -> pb.ProblemRef:
        # Validated like an inline suite, so that a ref always names a usable problem.
        probe = pb.VerifyRequest(
            id="register", code=pb.CodeCase(language="python", code="", problem=request)
        )
        case = await self._case(probe, keep=False)
        assert isinstance(case, CodeCase)
        return pb.ProblemRef(sha256=await self._store(request, case))


def _one_item(request: pb.VerifyRequest | Undecodable) -> tuple[pb.VerifyRequest | Undecodable]:
    return (request,)


def _batch_items(batch: pb.VerifyBatch | Undecodable) -> Iterable[pb.VerifyRequest | Undecodable]:
    return (batch,) if isinstance(batch, Undecodable) else batch.requests


def _error_response(case_id: str, exc: BaseException) -> pb.VerifyResponse:
    code, message = status_for(exc)
    return pb.VerifyResponse(id=case_id, error=message, error_code=error_code_to_pb(code))


def build_verifier_server(
    server: ServerConfig,
    service: ServiceConfig,
    engine: Engine,
    registry: CollectorRegistry,
) -> tuple[Server, VerifierService]:
    """A bound, not yet started server with the verifier on it (``Server.port`` says where)."""
    servicer = VerifierService(engine, registry, service)
    srv = build_server(
        server, lambda s: pb_grpc.add_VerifierServicer_to_server(servicer, s), [SERVICE_NAME]
    )
    return srv, servicer
