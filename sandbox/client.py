"""Client of the verifier service, for the rollout and learner side.

Spreads calls over several servers with gRPC's own ``round_robin`` policy (a ``dns:///``
name that resolves to many addresses, or a comma-separated list of ``ip:port``), and retries
what is not the program's fault (SE results, UNAVAILABLE, RESOURCE_EXHAUSTED) with
exponential backoff; round robin sends each retry to the next server.

Large test suites travel once: a code case with many tests is sent as a reference (its
content hash, computed the way the server does). A server that does not hold it (never saw
it, or evicted it) answers NOT_FOUND; the client then registers the suite and sends that case
inline (servers keep large inline suites too). Round robin puts the two calls on different
servers, so the suite spreads over the fleet within a few cases. None of this is visible to
the caller.

A verdict this client does not know (from a server built from a newer proto) is not a
result anyone can give a reward for: ``verify`` and ``verify_many`` raise
``convert.UnknownEnumValue`` naming the field and the number, without retrying (as an SE
result it would be retried in vain, then pass for an ordinary system error). Upgrade clients
before servers.

No server answering is not a result either: once the retries run out on UNAVAILABLE, both
raise ``VerifierUnavailable``, which names the target and what gRPC last saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import random
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, TypeAlias

import grpc

from rlfleet.grpc_client import ServerUnavailable
from rlfleet.sandbox.convert import (
    case_to_request,
    problem_from_case,
    problem_ref,
    response_to_result,
)
from rlfleet.sandbox.records import Case, CaseResult, CodeCase, Verdict
from rlfleet.v1 import verifier_pb2 as pb
from rlfleet.v1 import verifier_pb2_grpc as pb_grpc

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# Per-item errors in a stream carry the status code; these are retried through ``verify``.
RETRYABLE_ITEM = frozenset(
    {pb.ERROR_CODE_UNAVAILABLE, pb.ERROR_CODE_RESOURCE_EXHAUSTED, pb.ERROR_CODE_NOT_FOUND}
)
BATCH_BYTES = 1 << 20
"""A stream message holds more than one case only up to about this many bytes."""

StreamCall: TypeAlias = "grpc.aio.StreamStreamCall[Any, Any]"


class VerifierUnavailable(ServerUnavailable):
    """No verifier at ``target`` answered in any of the client's attempts."""

    what = "verifier"


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    attempts: int = 4
    """Tries per case: SE results and UNAVAILABLE / RESOURCE_EXHAUSTED are tried again."""
    backoff_s: float = 0.05
    """Delay before the first retry; doubles each time, with up to 100% jitter."""
    max_backoff_s: float = 2.0
    """Ceiling of the retry delay."""
    register_min_tests: int = 8
    """Code cases with at least this many tests send their suite by reference."""
    max_message_mb: int = 64
    """Largest request or response (match the server's)."""
    tls_ca: Path | None = None
    """PEM roots to verify the servers with; enables TLS."""
    timeout_s: float | None = None
    """Deadline per unary call (None: none)."""
    stream_buffer: int = 256
    """Results ``verify_many`` holds for a slow consumer before it stops reading the
    stream (which in turn stops the server from taking more of our requests)."""
    max_retries_in_flight: int = 64
    """Concurrent retries ``verify_many`` runs for SE or refused items."""
    stream_batch: int = 64
    """Cases ``verify_many`` sends in one stream message at most: those already waiting
    when the stream takes more (a message costs more than a small case). The source is
    read this many cases ahead. 1: one case per message."""

    def __post_init__(self) -> None:
        if self.stream_batch < 1:
            raise ValueError("stream_batch must be >= 1")


def channel_target(target: str) -> str:
    """``host:port`` | ``dns:///name:port`` | ``ip:port,ip:port,...`` -> a gRPC target.

    A list becomes gRPC's static resolver syntax (``ipv4:a:1,b:2``), so round robin has
    one subchannel per server; it must be IP addresses (names: use ``dns:///``).
    """
    target = target.strip()
    if "," not in target or target.startswith(("ipv4:", "ipv6:", "dns:", "unix:")):
        return target
    addrs = [a.strip() for a in target.split(",") if a.strip()]
    hosts = [a.rsplit(":", 1)[0].strip("[]") for a in addrs]
    try:
        versions = {ipaddress.ip_address(h).version for h in hosts}
    except ValueError:
        raise ValueError(
            f"target {target!r}: a list must be ip:port entries (for names use dns:///)"
        ) from None
    if versions == {4}:
        return "ipv4:" + ",".join(addrs)
    if versions == {6}:
        return "ipv6:" + ",".join(addrs)
    raise ValueError(f"target {target!r}: do not mix IPv4 and IPv6 addresses")


class VerifierClient:
    """Async client; use as ``async with VerifierClient("127.0.0.1:50051") as c: ...``."""

    def __init__(self, target: str, config: ClientConfig = ClientConfig()) -> None:
        self.config = config
        self.target = target
        size = config.max_message_mb << 20
        options = [
            ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
            # gRPC waits 1 s (growing to 120 s) before redialling a failed server; a fleet's
            # servers restart in seconds, and our own retries should find them back.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 5000),
        ]
        resolved = channel_target(target)
        if config.tls_ca is not None:
            creds = grpc.ssl_channel_credentials(config.tls_ca.read_bytes())
            self._channel = grpc.aio.secure_channel(resolved, creds, options)
        else:
            self._channel = grpc.aio.insecure_channel(resolved, options)
        self._stub = pb_grpc.VerifierStub(self._channel)
        self._batches: bool | None = None if config.stream_batch > 1 else False
        """Streams use VerifyBatches: None until a server was asked whether it has it
        (``_has_batches``), False after one answered UNIMPLEMENTED (it is older)."""

    async def __aenter__(self) -> VerifierClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def register(self, case: CodeCase) -> str:
        """Store ``case``'s test suite on (one of) the servers; returns its reference."""
        reply = await self._stub.RegisterProblem(
            problem_from_case(case), timeout=self.config.timeout_s
        )
        return reply.sha256

    def _by_ref(self, case: Case) -> bool:
        return isinstance(case, CodeCase) and len(case.tests) >= self.config.register_min_tests

    def _request(self, case: Case, inline: bool = False) -> pb.VerifyRequest:
        if isinstance(case, CodeCase) and self._by_ref(case) and not inline:
            return case_to_request(case, problem_ref(case))
        return case_to_request(case)

    async def _has_batches(self) -> bool:
        """Whether streams go as VerifyBatches; asks a server once (an empty call: an older
        server answers UNIMPLEMENTED at once). Asked while streaming cases instead, the
        answer can race a write into the refused call, which gRPC then ends as INTERNAL."""
        if self._batches is None:
            probe: StreamCall = self._stub.VerifyBatches(timeout=self.config.timeout_s)
            try:
                with contextlib.suppress(Exception):  # (no server: the status says so)
                    await probe.done_writing()
                code = await probe.code()
            finally:
                probe.cancel()
            if code == grpc.StatusCode.OK:
                self._batches = True
            elif code == grpc.StatusCode.UNIMPLEMENTED:
                self._batches = False
            # Otherwise unknown still (no server answered?): the stream will tell.
        return self._batches is not False

    def _raise_last(self, e: grpc.aio.AioRpcError) -> NoReturn:
        """Raise a call's last error: as ``VerifierUnavailable`` when no server answered."""
        if e.code() is grpc.StatusCode.UNAVAILABLE:
            raise VerifierUnavailable(self.target, self.config.attempts, e) from e
        raise e

    def _delay(self, retry: int) -> float:
        base = min(self.config.backoff_s * (2**retry), self.config.max_backoff_s)
        return base * (1 + random.random())

    async def verify(self, case: Case) -> CaseResult:
        """One case, retried on SE and transient errors.

        Raises ValueError when the server refuses the case as invalid,
        ``VerifierUnavailable`` when no server answered any attempt, the last other
        ``grpc.aio.AioRpcError`` when the retries run out, and ``UnknownEnumValue`` when the
        server answers a verdict this client does not know (not retried); returns the last
        SE result when every attempt ended in SE.
        """
        inline = False
        retry = 0
        last: CaseResult | None = None
        while True:
            try:
                reply = await self._stub.Verify(
                    self._request(case, inline), timeout=self.config.timeout_s
                )
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if code == grpc.StatusCode.NOT_FOUND and isinstance(case, CodeCase) and not inline:
                    # Register, and send this case inline: round robin puts the two calls on
                    # different servers, and both keep the suite for the next samples.
                    inline = True
                    try:
                        await self.register(case)
                    except grpc.aio.AioRpcError as reg:
                        if reg.code() not in RETRYABLE:
                            raise
                    continue  # (a failed register is fine: the case now carries its suite)
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise ValueError(f"case {case.id!r}: {e.details()}") from None
                if code not in RETRYABLE or retry + 1 >= self.config.attempts:
                    self._raise_last(e)
            else:
                last = response_to_result(reply)
                if last.verdict is not Verdict.SE or retry + 1 >= self.config.attempts:
                    return last
            await asyncio.sleep(self._delay(retry))
            retry += 1

    async def verify_many(
        self, cases: Iterable[Case] | AsyncIterable[Case]
    ) -> AsyncIterator[CaseResult]:
        """Verify over one bidi stream; results come as they finish (any order, by id).

        Cases are pulled from ``cases`` only as fast as the server takes them. SE results
        and transiently refused items are retried through ``verify`` meanwhile; if the
        stream itself fails (a server went away) the unanswered cases are sent again on a
        new one. Raises ValueError for a case the server refuses as invalid,
        ``VerifierUnavailable`` when no server answers, and ``UnknownEnumValue`` for a
        verdict this client does not know (as ``verify``).
        """
        out = _Results(self.config.stream_buffer)
        pump = asyncio.create_task(self._pump(_aiter(cases), out))
        pump.add_done_callback(lambda _: out.end())
        try:
            while (result := await out.get()) is not None:
                yield result
            pump.result()  # raises what ended the pump
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    async def _pump(self, source: AsyncIterator[Case], out: _Results) -> None:
        retries: set[asyncio.Task[None]] = set()
        room = asyncio.Semaphore(self.config.max_retries_in_flight)

        failed: list[BaseException] = []

        async def retry(case: Case) -> None:
            try:
                await out.put(await self.verify(case))
            except Exception as e:
                failed.append(e)  # raised by the pump at its next step
            finally:
                room.release()

        def retry_later(case: Case) -> None:
            task = asyncio.create_task(retry(case))
            retries.add(task)
            task.add_done_callback(retries.discard)

        # One task pulls the source for the whole call, never cancelled mid-pull: a stream
        # that breaks while the source is waiting (a batch's next group not finished yet)
        # must leave the source whole for the next stream. (gRPC's own request poller is not
        # cancelled when its call fails, and would take the next case into the dead call.)
        incoming: asyncio.Queue[Case | None] = asyncio.Queue(maxsize=self.config.stream_batch)

        async def pull() -> None:
            try:
                async for case in source:
                    await incoming.put(case)
            except Exception as e:
                failed.append(e)
            await incoming.put(None)

        puller = asyncio.create_task(pull())
        # Cases of a broken stream to send again; the next stream takes them one by one, so
        # what it has not taken when it breaks too is still here.
        resend: deque[Case] = deque()
        source_done = False
        failures = 0
        try:
            while True:
                # Sent and not answered yet, by id (a list: ids may repeat).
                unanswered: dict[str, list[Case]] = {}
                batched = await self._has_batches()
                call: StreamCall = (
                    self._stub.VerifyBatches() if batched else self._stub.VerifyStream()
                )

                def next_ready() -> Case | None:
                    """A case to send that is here already (None: none without waiting)."""
                    nonlocal source_done
                    if resend:
                        return resend.popleft()
                    if source_done or incoming.empty():
                        return None
                    got = incoming.get_nowait()
                    source_done = got is None
                    return got

                async def write(
                    call: StreamCall = call,
                    unanswered: dict[str, list[Case]] = unanswered,
                    batched: bool = batched,
                ) -> None:
                    nonlocal source_done
                    # A case is in ``unanswered`` before it is written: cancelled or failed
                    # at any await here, nothing taken is lost.
                    while True:
                        first = next_ready()
                        if first is None and not source_done:
                            first = await incoming.get()
                            source_done = first is None
                        if first is None:
                            break
                        unanswered.setdefault(first.id, []).append(first)
                        if not batched:
                            await call.write(self._request(first))
                            continue
                        requests = [self._request(first)]
                        size = requests[0].ByteSize()
                        while len(requests) < self.config.stream_batch and size < BATCH_BYTES:
                            case = next_ready()
                            if case is None:
                                break
                            request = self._request(case)
                            size += request.ByteSize()
                            if size > BATCH_BYTES:
                                resend.appendleft(case)  # (too big to join: it goes next)
                                break
                            requests.append(request)
                            unanswered.setdefault(case.id, []).append(case)
                        await call.write(pb.VerifyBatch(requests=requests))
                    await call.done_writing()

                writer = asyncio.create_task(write())
                try:
                    async for message in call:
                        if failed:
                            raise failed[0]
                        failures = 0  # a stream that answers has recovered
                        for reply in message.responses if batched else (message,):
                            waiting = unanswered.get(reply.id)
                            if not waiting:
                                raise RuntimeError(f"server answered an unknown id {reply.id!r}")
                            case = waiting.pop(0)
                            if not waiting:
                                del unanswered[reply.id]
                            if reply.error or reply.error_code:
                                if reply.error_code not in RETRYABLE_ITEM:
                                    raise ValueError(f"case {reply.id!r}: {reply.error}")
                                await room.acquire()
                                retry_later(case)
                                continue
                            result = response_to_result(reply)
                            if result.verdict is Verdict.SE:
                                await room.acquire()
                                retry_later(case)
                                continue
                            await out.put(result)
                except grpc.aio.AioRpcError as e:
                    if batched and e.code() == grpc.StatusCode.UNIMPLEMENTED:
                        # A server that predates VerifyBatches: one case per message from
                        # now on, starting with what this stream took.
                        self._batches = False
                        await _stop(writer)
                        lost = [c for waiting in unanswered.values() for c in waiting]
                        resend.extendleft(reversed(lost))
                        continue
                    if e.code() not in RETRYABLE or failures + 1 >= self.config.attempts:
                        self._raise_last(e)
                    await _stop(writer)
                    await asyncio.sleep(self._delay(failures))
                    failures += 1
                    lost = [c for waiting in unanswered.values() for c in waiting]
                    resend.extendleft(reversed(lost))  # in their original order, first
                    continue
                finally:
                    call.cancel()
                    await _stop(writer)
                if failed:
                    raise failed[0]  # (the source itself failed)
                if not source_done or resend:
                    # The server ended the stream before taking everything (it is going
                    # away): what it left goes on a new stream, as after a failure.
                    ended = grpc.aio.AioRpcError(
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.aio.Metadata(),
                        grpc.aio.Metadata(),
                        details="the stream ended before it took every case",
                    )
                    if failures + 1 >= self.config.attempts:
                        self._raise_last(ended)
                    await asyncio.sleep(self._delay(failures))
                    failures += 1
                    lost = [c for waiting in unanswered.values() for c in waiting]
                    resend.extendleft(reversed(lost))
                    continue
                # The server closed the stream cleanly: anything unanswered goes by unary.
                for waiting in unanswered.values():
                    for case in waiting:
                        await room.acquire()
                        retry_later(case)
                break
            while retries:
                await asyncio.gather(*retries)
            if failed:
                raise failed[0]  # e.g. a retried case the server refused as invalid
        finally:
            puller.cancel()
            for task in retries:
                task.cancel()
            await asyncio.gather(puller, *retries, return_exceptions=True)


class _Results:
    """From ``verify_many``'s pump to its caller: results, at most ``size`` of them waiting
    (the pump waits for room), then the end of the pump. The caller waits on the queue
    alone: no task or ``asyncio.wait`` per result."""

    def __init__(self, size: int) -> None:
        self._room = asyncio.Semaphore(size)
        self._queue: asyncio.Queue[CaseResult | None] = asyncio.Queue()

    async def put(self, result: CaseResult) -> None:
        await self._room.acquire()
        self._queue.put_nowait(result)

    def end(self) -> None:
        """No more results (the pump has ended, whichever way)."""
        self._queue.put_nowait(None)

    async def get(self) -> CaseResult | None:
        """The next result, or None once the pump has ended and every result was taken."""
        result = await self._queue.get()
        if result is not None:
            self._room.release()
        return result


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it; its own failure (a write into a broken call) is
    the stream's, which the reader sees."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _aiter(cases: Iterable[Case] | AsyncIterable[Case]) -> AsyncIterator[Case]:
    if isinstance(cases, AsyncIterable):
        async for case in cases:
            yield case
    else:
        for case in cases:
            yield case
