"""Client of the rollout service, for the learner and the operator CLI.

Targets are those of ``VerifierClient``: ``host:port``, ``dns:///name:port`` (every address
the name resolves to), or a comma-separated list of ``ip:port``; calls are spread with
gRPC's ``round_robin`` policy.

What is retried is only what cannot have had an effect: a Generate call that failed with
UNAVAILABLE before its first completion arrived, a weight push the server never answered
(UNAVAILABLE: nothing is applied before the whole stream has arrived and checked out),
Status. Once the retries are spent, no server answering is ``RolloutUnavailable`` (an
``rlfleet.errors.Unavailable``); a request the server refuses is ``RequestRejected``; a
weight update it refuses is ``WeightsRejected``, with the status code that says why.

Weight pushes send their bytes over the server's data plane (``data_plane.py``: a one-shot
TCP connection beside the call) when the server offers it, the target names one server and
the client has no TLS; otherwise, or when ``ClientConfig.weight_transport`` says "grpc", in
the call's messages. A data connection that cannot be opened makes the push (and the
client's later ones) go over messages instead, unless the transport was forced.

Weights by broadcast (``join_weight_group``, ``broadcast_weights``) are never retried: a
join or a broadcast cut short leaves a group the learner discards, and it joins anew.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import grpc

from rlfleet.grpc_client import ServerUnavailable
from rlfleet.rollout import checksum as checksums
from rlfleet.rollout import data_plane
from rlfleet.rollout.convert import (
    broadcast_request_to_pb,
    completion_from_pb,
    data_chunk_bytes,
    manifest_to_pb,
    request_to_pb,
    status_from_pb,
    update_result_from_pb,
    weight_group_to_pb,
)
from rlfleet.rollout.records import (
    Completion,
    EngineStatus,
    GenerateRequest,
    WeightGroup,
    WeightManifest,
    WeightUpdateResult,
)
from rlfleet.rollout.weights import WeightSource, open_source
from rlfleet.sandbox.client import channel_target
from rlfleet.v1 import rollout_pb2 as pb
from rlfleet.v1 import rollout_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

ACCEPTED_KEY, ACCEPTED_VALUE = "rlfleet-update", "accepted"
"""The server's initial metadata once it has accepted an update's manifest (as
``servicer.ACCEPTED``; not imported from there, which would bring the server's imports)."""
DEFAULT_BUCKET_BYTES = 8 << 20
"""Bytes of tensor data per pushed message. 8 MiB measured fastest here (4, 8, 16 and 32
MiB tried: larger buckets cost more in page faults and gRPC buffering, smaller ones more
per-message overhead); the receiver holds a few at a time."""


class RolloutUnavailable(ServerUnavailable):
    """No rollout server at ``target`` answered in any of the client's attempts."""

    what = "rollout server"


class RequestRejected(ValueError):
    """The server refused a Generate request as invalid; the message names the field."""


class DataPlaneUnavailable(ConnectionError):
    """A push forced onto the data plane (``weight_transport="data-plane"``) could not use it:
    the target may name several servers, the server did not offer it (TLS, or turned off),
    or its data connection could not be opened or broke. Nothing was applied."""


class WeightsRejected(ValueError):
    """The server refused a weight update and kept its old weights: ``code`` is
    INVALID_ARGUMENT (a tensor does not fit the model), FAILED_PRECONDITION (the version is
    not newer than the one serving) or DATA_LOSS (the bytes arrived incomplete or corrupt)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class GroupNotJoined(LookupError):
    """BroadcastWeights named a weight group the server is not in (it restarted, or its
    group broke): join it anew."""


REJECTED_UPDATE = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.DATA_LOSS,
    }
)


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    attempts: int = 4
    """Tries per call, for what may be retried (see the module's docstring)."""
    backoff_s: float = 0.05
    """Delay before the first retry; doubles each time, with up to 100% jitter."""
    max_backoff_s: float = 2.0
    """Ceiling of the retry delay."""
    max_message_mb: int = 64
    """Largest message (match the server's); pushed buckets must fit in it."""
    tls_ca: Path | None = None
    """PEM roots to verify the servers with; enables TLS."""
    timeout_s: float | None = None
    """Deadline of a Status call and of a whole weight push (None: none)."""
    weight_transport: Literal["auto", "data-plane", "grpc"] = "auto"
    """How pushed bytes travel: "auto" over the server's data plane when it is offered (see
    the module's docstring), else in the call's messages; "data-plane" only over it
    (``DataPlaneUnavailable`` otherwise); "grpc" only in messages."""
    data_timeout_s: float = 30.0
    """Longest wait to open the data connection, and for each write on it."""

    def __post_init__(self) -> None:
        if self.weight_transport not in ("auto", "data-plane", "grpc"):
            raise ValueError(
                f"weight_transport: {self.weight_transport!r} (one of auto, data-plane, grpc)"
            )
        if self.weight_transport == "data-plane" and self.tls_ca is not None:
            raise ValueError("weight_transport: the data plane has no TLS; use grpc or auto")
        if self.data_timeout_s <= 0:
            raise ValueError("data_timeout_s: must be > 0")


def weight_stream(
    source: WeightSource, version: int, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[bytes]:
    """An UpdateWeights stream, serialized: the manifest, the tensors' bytes in buckets of
    ``bucket_bytes``, then their checksum (``checksum.DEFAULT``)."""
    begin = manifest_to_pb(source.manifest(version))
    begin.checksum = checksums.DEFAULT
    yield pb.WeightChunk(begin=begin).SerializeToString()
    yield from data_messages(source, bucket_bytes)


def data_messages(source: WeightSource, bucket_bytes: int) -> Iterator[bytes]:
    """The part of an UpdateWeights stream after ``begin`` (which names
    ``checksum.DEFAULT``), serialized."""
    digest = checksums.new_hasher(checksums.DEFAULT)
    for view in source.buckets(bucket_bytes):
        digest.update(view)
        yield data_chunk_bytes(view)
    yield pb.WeightChunk(checksum=digest.hexdigest()).SerializeToString()


def iter_weight_chunks(
    source: WeightSource, version: int, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[pb.WeightChunk]:
    """``weight_stream`` as messages."""
    for raw in weight_stream(source, version, bucket_bytes):
        yield pb.WeightChunk.FromString(raw)


def _offer(metadata: Mapping[str, Any]) -> tuple[int, bytes] | None:
    """The data connection an UpdateWeights call's initial metadata offers, if any."""
    port, token = metadata.get(data_plane.PORT_KEY), metadata.get(data_plane.TOKEN_KEY)
    if not isinstance(port, str) or not isinstance(token, str):
        return None
    try:
        return int(port), bytes.fromhex(token)
    except ValueError:
        return None


async def _send_messages(
    call: grpc.aio.StreamUnaryCall, weights: WeightSource, bucket_bytes: int
) -> None:
    messages = _prefetched(data_messages(weights, bucket_bytes))
    try:
        async for message in messages:
            await call.write(message)
    finally:
        await messages.aclose()


async def _prefetched(messages: Iterator[bytes]) -> AsyncGenerator[bytes, None]:
    """Reading and hashing a bucket blocks for milliseconds: done in a thread, one bucket
    ahead, while gRPC sends the one before."""
    end = b""
    ahead = asyncio.ensure_future(asyncio.to_thread(next, messages, end))
    try:
        while (message := await ahead) != end:
            ahead = asyncio.ensure_future(asyncio.to_thread(next, messages, end))
            yield message
    finally:
        ahead.cancel()


def one_server_host(target: str) -> str | None:
    """The host of a target that names one server (``host:port``, ``dns:///host:port``):
    where that server's data connections are. None for a list of servers. (A name that
    resolves to several addresses spreads calls over them: push to each by its own name.)"""
    target = target.strip()
    if "," in target:
        return None
    for scheme in ("dns:///", "ipv4:", "ipv6:"):
        target = target.removeprefix(scheme)
    if target.startswith(("dns:", "unix:")) or ":" not in target:
        return None
    host = target.rsplit(":", 1)[0].strip("[]")
    return host or None


def channel_options(config: ClientConfig) -> list[tuple[str, Any]]:
    """The gRPC channel options of a ``RolloutClient`` (the weight-push bench's bare
    baseline uses the same)."""
    size = config.max_message_mb << 20
    return [
        ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]


class RolloutClient:
    """Async client; use as ``async with RolloutClient("127.0.0.1:50052") as c: ...``."""

    def __init__(self, target: str, config: ClientConfig = ClientConfig()) -> None:
        self.config = config
        self.target = target
        options = channel_options(config)
        resolved = channel_target(target)  # ValueError for a malformed list
        if config.tls_ca is not None:
            creds = grpc.ssl_channel_credentials(config.tls_ca.read_bytes())
            self._channel = grpc.aio.secure_channel(resolved, creds, options)
        else:
            self._channel = grpc.aio.insecure_channel(resolved, options)
        self._stub = pb_grpc.RolloutStub(self._channel)
        # The data plane: never under TLS (it has none), only where the host is known.
        self._data_host = (
            one_server_host(target)
            if config.tls_ca is None and config.weight_transport != "grpc"
            else None
        )
        self._data_plane_works = True
        # UpdateWeights with messages serialized here (``weight_stream``): the buckets are
        # not copied into and out of protobuf messages on the way.
        self._update_weights = self._channel.stream_unary(
            "/rlfleet.v1.Rollout/UpdateWeights",
            response_deserializer=pb.WeightUpdateResult.FromString,
        )
        # BroadcastWeights is unary, but called as a client stream of one message: gRPC's
        # unary calls deliver the server's initial metadata (the acceptance the learner
        # waits for before broadcasting) only with the response.
        self._broadcast_weights = self._channel.stream_unary(
            "/rlfleet.v1.Rollout/BroadcastWeights",
            request_serializer=pb.BroadcastWeightsRequest.SerializeToString,
            response_deserializer=pb.WeightUpdateResult.FromString,
        )

    async def __aenter__(self) -> RolloutClient:
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

    def _delay(self, retry: int) -> float:
        base = min(self.config.backoff_s * (2**retry), self.config.max_backoff_s)
        return base * (1 + random.random())

    def _unavailable(self, e: grpc.aio.AioRpcError, retry: int) -> bool:
        """Whether ``e`` is UNAVAILABLE with attempts left (else raise it, typed)."""
        if e.code() is not grpc.StatusCode.UNAVAILABLE:
            return False
        if retry + 1 >= self.config.attempts:
            raise RolloutUnavailable(self.target, self.config.attempts, e) from e
        return True

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Completion, None]:
        """Completions as they finish (any order; ``prompt_id`` and ``sample`` identify
        them). Closing the iterator cancels the call, and with it the server's work."""
        message = request_to_pb(request)
        retry = 0
        while True:
            call = self._stub.Generate(message)
            received = False
            try:
                async for reply in call:
                    received = True
                    yield completion_from_pb(reply)
                return
            except grpc.aio.AioRpcError as e:
                if e.code() is grpc.StatusCode.INVALID_ARGUMENT:
                    raise RequestRejected(e.details() or "invalid request") from None
                if received or not self._unavailable(e, retry):
                    if e.code() is grpc.StatusCode.UNAVAILABLE:
                        raise RolloutUnavailable(self.target, retry + 1, e) from e
                    raise
            finally:
                call.cancel()
            await asyncio.sleep(self._delay(retry))
            retry += 1

    async def push_weights(
        self,
        source: Path | Mapping[str, Any] | WeightSource,
        version: int,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ) -> WeightUpdateResult:
        """Push a model directory's ``*.safetensors`` (or ``{name: tensor}``) as policy
        ``version``; returns once the server serves it. Raises ``WeightsRejected``,
        ``RolloutUnavailable``, ``weights.WeightFileError`` for a source that cannot be
        read, or ``checksum.ChecksumUnavailable`` (before anything is sent)."""
        if bucket_bytes > (self.config.max_message_mb << 20) - 1024:
            raise ValueError(f"bucket_bytes: {bucket_bytes} does not fit in one message")
        checksums.new_hasher(checksums.DEFAULT)  # (its library is there, or say so now)
        weights = source if isinstance(source, WeightSource) else open_source(source)
        forced = self.config.weight_transport == "data-plane"
        if forced and self._data_host is None:
            raise DataPlaneUnavailable(f"{self.target}: names more than one server")
        retry = 0
        while True:
            use_data_plane = self._data_host is not None and (forced or self._data_plane_works)
            try:
                reply = await self._push(weights, version, bucket_bytes, use_data_plane)
                return update_result_from_pb(reply)
            except grpc.aio.AioRpcError as e:
                if e.code() in REJECTED_UPDATE:
                    raise WeightsRejected(e.code(), e.details() or "refused") from None
                if not self._unavailable(e, retry):
                    raise
            except data_plane.NoDataConnection as e:
                if forced:
                    raise DataPlaneUnavailable(f"{self.target}: {e}") from e
                # Nothing was read from the source yet: the same push goes over messages.
                log.warning("%s: %s; pushing weights in gRPC messages instead", self.target, e)
                self._data_plane_works = False
                continue
            await asyncio.sleep(self._delay(retry))
            retry += 1

    async def _push(
        self, weights: WeightSource, version: int, bucket_bytes: int, use_data_plane: bool
    ) -> pb.WeightUpdateResult:
        """One UpdateWeights call: ``begin``, then (once the server has accepted it, in its
        initial metadata) the data, over the data connection the server offers or in
        messages. A refusal thus ends the call before any data is on the way, and its status
        comes back as sent (gRPC reports a write that races the server's answer as
        INTERNAL)."""
        call = self._update_weights(timeout=self.config.timeout_s)
        begin = manifest_to_pb(weights.manifest(version))
        begin.data_plane = use_data_plane
        begin.checksum = checksums.DEFAULT
        try:
            try:
                await call.write(pb.WeightChunk(begin=begin).SerializeToString())
                metadata = dict(await call.initial_metadata() or ())
                if metadata.get(ACCEPTED_KEY) == ACCEPTED_VALUE:
                    offer = _offer(metadata) if use_data_plane else None
                    if offer is not None:
                        await self._send_over_connection(call, offer, weights, bucket_bytes)
                    elif use_data_plane and self.config.weight_transport == "data-plane":
                        raise DataPlaneUnavailable(f"{self.target}: no data plane offered")
                    else:
                        await _send_messages(call, weights, bucket_bytes)
                    await call.done_writing()
            except asyncio.InvalidStateError:
                pass  # the call has ended (no server, a refusal): its status says why
            return await call
        finally:
            call.cancel()  # (nothing, once it has ended)

    async def _send_over_connection(
        self,
        call: grpc.aio.StreamUnaryCall,
        offer: tuple[int, bytes],
        weights: WeightSource,
        bucket_bytes: int,
    ) -> None:
        """Send the data over the offered connection (in a thread), then its checksum on
        the call. A connection that breaks is explained by the call's status when the server
        has ended it (a refusal: ``InvalidStateError``), else raised: ``NoDataConnection``
        or ``DataPlaneUnavailable``."""
        assert self._data_host is not None
        port, token = offer
        work = asyncio.ensure_future(
            asyncio.to_thread(
                data_plane.send,
                self._data_host,
                port,
                token,
                weights,
                bucket_bytes,
                self.config.data_timeout_s,
                checksums.DEFAULT,
            )
        )
        try:
            digest = await asyncio.shield(work)
        except asyncio.CancelledError:
            call.cancel()  # the server drops the connection: the thread stops at once
            await asyncio.wait({work})
            raise
        except data_plane.NoDataConnection:
            raise
        except OSError as e:
            # A server that refused the update mid-way closes the connection: its answer
            # comes on the call a moment later.
            await asyncio.wait({asyncio.ensure_future(call.code())}, timeout=2.0)
            if call.done():
                raise asyncio.InvalidStateError("the call has ended") from e
            raise DataPlaneUnavailable(
                f"{self.target}: data connection: {e.strerror or e}; nothing was applied"
            ) from e
        await call.write(pb.WeightChunk(checksum=digest).SerializeToString())

    async def join_weight_group(self, group: WeightGroup, timeout_s: float) -> int:
        """Have the server join ``group`` (the caller creates its own side meanwhile);
        returns the ranks it joined with. Raises ``WeightsRejected`` (INVALID_ARGUMENT,
        FAILED_PRECONDITION: an engine that cannot receive broadcasts), ``grpc.aio.AioRpcError``
        otherwise (INTERNAL: the engine could not join; DEADLINE_EXCEEDED)."""
        try:
            reply = await self._stub.JoinWeightGroup(weight_group_to_pb(group), timeout=timeout_s)
        except grpc.aio.AioRpcError as e:
            if e.code() in REJECTED_UPDATE:
                raise WeightsRejected(e.code(), e.details() or "refused") from None
            raise
        return int(reply.ranks)

    def broadcast_weights(
        self, manifest: WeightManifest, group_name: str, timeout_s: float
    ) -> BroadcastCall:
        """Start a BroadcastWeights call: ``await call.accepted()`` before broadcasting the
        tensors in the group, then ``await call.result()``."""
        call = self._broadcast_weights(
            iter([broadcast_request_to_pb(manifest, group_name)]), timeout=timeout_s
        )
        return BroadcastCall(call)

    async def status(self) -> EngineStatus:
        retry = 0
        while True:
            try:
                reply = await self._stub.Status(pb.StatusRequest(), timeout=self.config.timeout_s)
                return status_from_pb(reply)
            except grpc.aio.AioRpcError as e:
                if not self._unavailable(e, retry):
                    raise
            await asyncio.sleep(self._delay(retry))
            retry += 1


class BroadcastCall:
    """A BroadcastWeights call in flight (``RolloutClient.broadcast_weights``)."""

    def __init__(self, call: grpc.aio.StreamUnaryCall) -> None:
        self._call = call

    async def accepted(self) -> None:
        """Returns once the server has accepted the manifest and waits for the tensors;
        raises its refusal (``WeightsRejected``) or failure (``grpc.aio.AioRpcError``)."""
        metadata = dict(await self._call.initial_metadata() or ())
        if metadata.get(ACCEPTED_KEY) != ACCEPTED_VALUE:
            await self.result()  # raises the status that ended the call
            raise RuntimeError("BroadcastWeights answered without accepting the update")

    async def result(self) -> WeightUpdateResult:
        """The server's outcome once it has received and loaded the tensors."""
        try:
            return update_result_from_pb(await self._call)
        except grpc.aio.AioRpcError as e:
            if e.code() is grpc.StatusCode.NOT_FOUND:
                raise GroupNotJoined(e.details() or "no such weight group") from None
            if e.code() in REJECTED_UPDATE:
                raise WeightsRejected(e.code(), e.details() or "refused") from None
            raise

    def cancel(self) -> None:
        self._call.cancel()
