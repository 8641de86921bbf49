"""The rollout gRPC service: a thin servicer over an ``Engine``.

Generate: each prompt becomes ``n`` sample requests (sample i seeded ``seed + i``; without a
seed the server draws one per prompt and reports each sample's), all handed to the engine at
once (it batches them). Each sample, once finished, is decoded, scored by the verifier
(``scoring.Scorer``: at once, never waiting for the rest of the batch, never for longer than
its timeout) and streamed back. Cancelling the call (client gone, deadline) cancels every
sample still generating (the engine sees its iterators closed) and every pending
verification.

UpdateWeights: the manifest is checked first (``engine.check_manifest``, and the version
must be newer than the one serving), before any byte is taken; the bytes go straight to a
spool file (``weights.Spool``: a safetensors file, hashed as it is written), and only a
stream that arrived whole and matches its checksum is handed to ``engine.update_weights``.
The bytes come in the call's messages, or, when the sender asks for it and the server has
no TLS, over a one-shot TCP connection offered in the call's initial metadata
(``data_plane``: the same checks, a faster transport).
Anything refused leaves the old weights serving. Updates run one at a time. Once every byte
is in and checked the update is applied even if the client leaves meanwhile (an apply is
never cut in half); the spool is deleted afterwards in every case (in the background: the
call answers without waiting for the file system, and the next update waits for it).

JoinWeightGroup / BroadcastWeights: the same checks, then the engine (a ``BroadcastReceiver``)
joins the learner's weight group, or receives a version by broadcast in it while the call
waits; one at a time with UpdateWeights. The servicer never touches a tensor on this path:
the engine's ranks are the group's members (docs/weight-push.md "By broadcast").

Sequences in flight when an update lands go on with the new weights: their later tokens
carry the new version, and the completion reports one ``VersionSpan`` per version.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from prometheus_client import CollectorRegistry

from rlfleet.grpc_server import (
    BadRequest,
    DataLoss,
    FailedPrecondition,
    NotFound,
    Server,
    ServerConfig,
    build_server,
)
from rlfleet.rollout.convert import (
    broadcast_manifest_from_pb,
    checksum_from_pb,
    completion_to_pb,
    digest_from_pb,
    manifest_from_pb,
    request_from_pb,
    status_to_pb,
    update_result_to_pb,
    weight_chunk_from_bytes,
    weight_group_from_pb,
)
from rlfleet.rollout.data_plane import PORT_KEY, TOKEN_KEY, DataListener
from rlfleet.rollout.engine import BroadcastReceiver, Engine, WeightMismatch, WeightUpdate
from rlfleet.rollout.metrics import RolloutMetrics
from rlfleet.rollout.records import (
    Completion,
    FinishReason,
    Prompt,
    SampleRequest,
    Timings,
    TokenChunk,
    VersionSpan,
    WeightUpdateResult,
)
from rlfleet.rollout.scoring import Scorer, Verifier
from rlfleet.rollout.weights import CorruptStream, Spool
from rlfleet.v1 import rollout_pb2 as pb
from rlfleet.v1 import rollout_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Rollout"].full_name
ACCEPTED = ("rlfleet-update", "accepted")
"""Initial metadata of an UpdateWeights call whose manifest and version were accepted."""
SEED_BITS = 63
"""Server-drawn seeds stay below 2**63, so ``seed + i`` fits every engine's seed type."""
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    verify_timeout_s: float = 60.0
    """Longest wait for the verifier's answer to one completion; past it the completion is
    returned unscored (the verifier client's own retries are bounded too)."""
    max_samples_per_call: int = 65536
    """Samples (prompts x n) one Generate call may ask for."""
    spool_dir: Path | None = None
    """Where weight updates are spooled while they arrive (None: the system's temp dir);
    needs room for one copy of the pushed tensors."""
    data_plane: bool = True
    """Offer pushes that ask for it a one-shot TCP connection for their bytes, on the host
    the gRPC server listens on (``data_plane.py``); never offered when the server has TLS."""
    data_timeout_s: float = 30.0
    """How long the data connection may take to come, and to send its next bytes, before
    the update is refused."""
    data_buffer_bytes: int = 4 << 20
    """Receive buffer of the data connection; ``Spool.depth + 1`` of them are the memory a
    push over it takes."""

    def __post_init__(self) -> None:
        if self.verify_timeout_s <= 0:
            raise ValueError("verify_timeout_s: must be > 0")
        if self.max_samples_per_call < 1:
            raise ValueError("max_samples_per_call: must be >= 1")
        if self.data_timeout_s <= 0:
            raise ValueError("data_timeout_s: must be > 0")
        if self.data_buffer_bytes < 1:
            raise ValueError("data_buffer_bytes: must be >= 1")


async def _uncancelled(work: asyncio.Future[T]) -> T:
    """Await ``work``; if we are cancelled meanwhile, let it finish first, then re-raise (a
    spool file must not be closed or deleted under a write or an apply in progress)."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        while not work.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({work})
        raise


async def _finished(work: asyncio.Future[Any]) -> None:
    """Wait until ``work`` is done, whatever its outcome (already reported elsewhere);
    cancelled meanwhile, still wait for it first."""
    try:
        await asyncio.wait({work})
    except asyncio.CancelledError:
        while not work.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({work})
        raise
    finally:
        if work.done() and not work.cancelled():
            work.exception()  # (retrieved: its outcome is reported elsewhere)


def _log_failure(what: str) -> Any:
    """A done-callback logging the failure of work whose caller may have left (a cancelled
    call re-raises its cancellation, not the work's error)."""

    def done(work: asyncio.Future[Any]) -> None:
        if not work.cancelled() and (error := work.exception()) is not None:
            log.warning("%s failed: %s", what, error)

    return done


async def _checksum_message(
    messages: AsyncIterator[bytes], begin: pb.WeightUpdateBegin
) -> str | None:
    """The rest of an update whose data comes over its data connection: one message with
    the checksum (its digest; None: the call ended without it); ``BadRequest`` for anything
    else."""
    digest: str | None = None
    async for raw in messages:
        msg = weight_chunk_from_bytes(raw)
        if digest is not None:
            raise BadRequest("checksum", "only in the last message")
        if isinstance(msg, memoryview) or msg.data:
            raise BadRequest("data", "comes over the data connection, never in messages")
        if msg.HasField("begin"):
            raise BadRequest("begin", "only in the first message")
        digest = digest_from_pb(msg, begin)
    return digest


class RolloutService(pb_grpc.RolloutServicer):
    def __init__(
        self,
        engine: Engine,
        verifier: Verifier | None,
        registry: CollectorRegistry,
        config: ServiceConfig = ServiceConfig(),
        data_host: str | None = None,
    ) -> None:
        """``data_host``: where to bind data connections (the gRPC server's host); None:
        no data plane."""
        self.engine = engine
        self.config = config
        self.data_host = data_host if config.data_plane else None
        self.metrics = RolloutMetrics(registry)
        self.scorer = Scorer(verifier, self.metrics, config.verify_timeout_s)
        self._calls = itertools.count()
        self._updating = asyncio.Lock()
        self._removal: asyncio.Future[None] | None = None
        """The last update's spool being deleted."""
        self._group: str | None = None
        """The weight group the engine last joined (JoinWeightGroup)."""
        self.metrics.version.set_function(lambda: engine.status().version)
        self.metrics.running.set_function(lambda: engine.status().running)
        self.metrics.queued.set_function(lambda: engine.status().queued)

    # -- Generate ---------------------------------------------------------------------------

    def _prompt_tokens(self, prompt: Prompt, where: str) -> tuple[int, ...]:
        if prompt.token_ids is not None:
            return prompt.token_ids
        ids = tuple(self.engine.tokenizer.encode(prompt.text or ""))
        if not ids:
            raise BadRequest(f"{where}text", "encodes to no tokens")
        return ids

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Completion]:
        arrival = time.perf_counter()
        req = request_from_pb(request)
        samples = sum(p.n for p in req.prompts)
        if samples > self.config.max_samples_per_call:
            raise BadRequest(
                "prompts",
                f"{samples} samples, more than the {self.config.max_samples_per_call} "
                "one call may ask for",
            )
        prompt_ids = [self._prompt_tokens(p, f"prompts[{i}].") for i, p in enumerate(req.prompts)]
        call = next(self._calls)
        samples_of: list[tuple[Prompt, int, SampleRequest]] = []
        for prompt, ids in zip(req.prompts, prompt_ids, strict=True):
            base = req.sampling.seed if prompt.seed is None else prompt.seed
            if base is None:
                base = secrets.randbits(SEED_BITS)
            for i in range(prompt.n):
                sampling = dataclasses.replace(req.sampling, seed=(base + i) % (1 << 64))
                key = f"{call}/{prompt.id}/{i}"
                samples_of.append(
                    (prompt, i, SampleRequest(key=key, prompt_token_ids=ids, sampling=sampling))
                )
        out: asyncio.Queue[Completion | BaseException] = asyncio.Queue()

        async def run(
            prompt: Prompt, sample: int, request: SampleRequest, chunks: AsyncIterator[TokenChunk]
        ) -> None:
            try:
                out.put_nowait(await self._sample(prompt, sample, request, chunks, arrival))
            except Exception as e:  # the call fails with it (its status), not a hang
                out.put_nowait(e)

        self.metrics.requests.inc()
        streams: Sequence[AsyncIterator[TokenChunk]] = ()
        tasks: list[asyncio.Task[None]] = []
        try:
            # All the call's samples reach the engine together (``Engine.generate_many``).
            streams = self.engine.generate_many([r for *_, r in samples_of])
            for (prompt, i, request_), chunks in zip(samples_of, streams, strict=True):
                tasks.append(asyncio.create_task(run(prompt, i, request_, chunks)))
            for _ in range(len(tasks)):
                item = await out.get()
                if isinstance(item, BaseException):
                    raise item
                yield completion_to_pb(item)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # (A sample whose task never ran still has its stream open in the engine.)
            await asyncio.gather(*(_aclose(c) for c in streams))
            self.metrics.requests.dec()

    async def _sample(
        self,
        prompt: Prompt,
        sample: int,
        request: SampleRequest,
        chunks: AsyncIterator[TokenChunk],
        arrival: float,
    ) -> Completion:
        sampling = request.sampling
        assert sampling.seed is not None  # (Generate gives every sample its own)
        prompt_ids = request.prompt_token_ids
        tokens: list[int] = []
        logprobs: list[float] = []
        spans: list[VersionSpan] = []
        finish: FinishReason | None = None
        started = time.perf_counter()
        first: float | None = None
        try:
            async for chunk in chunks:
                if chunk.token_ids:
                    if first is None:
                        first = time.perf_counter()
                        self.metrics.first_token.observe(first - arrival)
                    start = len(tokens)
                    end = start + len(chunk.token_ids)
                    if spans and spans[-1].version == chunk.version:
                        spans[-1] = dataclasses.replace(spans[-1], end=end)
                    else:
                        spans.append(VersionSpan(version=chunk.version, start=start, end=end))
                    tokens.extend(chunk.token_ids)
                    logprobs.extend(chunk.logprobs)
                    self.metrics.tokens.inc(len(chunk.token_ids))
                if chunk.finish_reason is not None:
                    finish = chunk.finish_reason
                    break
        finally:
            # Closing the iterator is how the engine learns the sample is not wanted any
            # more (cancelled call), and frees its slot.
            await _aclose(chunks)
        done = time.perf_counter()
        if finish is None:
            log.error("engine ended sample %s without a finish reason", request.key)
            finish = FinishReason.ABORT
        text = _cut_at_stop(self.engine.tokenizer.decode(tokens), sampling.stop, finish)
        if finish is FinishReason.ABORT:
            score_result, reason, verify_s = None, "generation aborted", 0.0
        else:
            score = await self.scorer.score(prompt.verification, text, f"{prompt.id}/{sample}")
            score_result, reason = score.result, score.reason
            verify_s = score.seconds if score.result is not None else 0.0
        self.metrics.completions.labels(finish.value, str(score_result is not None).lower()).inc()
        return Completion(
            prompt_id=prompt.id,
            sample=sample,
            prompt_token_ids=prompt_ids,
            token_ids=tuple(tokens),
            logprobs=tuple(logprobs),
            finish_reason=finish,
            versions=tuple(spans),
            text=text,
            seed=sampling.seed,
            result=score_result,
            unscored_reason=reason,
            timings=Timings(
                queued_s=started - arrival,
                first_token_s=(first if first is not None else done) - arrival,
                generate_s=done - arrival,
                verify_s=verify_s,
            ),
        )

    # -- UpdateWeights ----------------------------------------------------------------------

    async def UpdateWeights(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> pb.WeightUpdateResult:
        """Takes the stream's messages undecoded (see ``build_rollout_server``)."""
        outcome = "rejected"
        # A hung update never records a duration: this shows it (WeightUpdateStuck alert).
        self.metrics.update_started.set_to_current_time()
        try:
            result = await self._update(request_iterator, context)
            outcome = "applied"
            return update_result_to_pb(result)
        except (BadRequest, DataLoss, FailedPrecondition, asyncio.CancelledError):
            raise
        except Exception:
            outcome = "failed"
            raise
        finally:
            self.metrics.updates.labels(outcome).inc()
            self.metrics.update_started.set(0)

    async def _update(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> WeightUpdateResult:
        t0 = time.perf_counter()
        messages = aiter(request_iterator)
        raw = await anext(messages, None)
        if raw is None:
            raise BadRequest("begin", "missing (the stream was empty)")
        first = weight_chunk_from_bytes(raw)
        if isinstance(first, memoryview) or not first.HasField("begin"):
            raise BadRequest("begin", "missing from the first message")
        manifest = manifest_from_pb(first.begin)
        checksum = checksum_from_pb(first.begin)
        async with self._updating:
            serving = self.engine.status().version
            if manifest.version <= serving:
                raise FailedPrecondition(
                    f"begin.version: {manifest.version} is not newer than the version "
                    f"serving ({serving})"
                )
            try:
                self.engine.check_manifest(manifest)
            except WeightMismatch as e:
                raise BadRequest("begin.tensors", str(e)) from None
            listener = self._listen() if first.begin.data_plane else None
            # Tells the client to send the data (``ACCEPTED``), and where: a refusal is the
            # call's status instead, which a client still writing could only see as INTERNAL.
            offer = (
                ()
                if listener is None
                else ((PORT_KEY, str(listener.port)), (TOKEN_KEY, listener.token.hex()))
            )
            try:
                if self._removal is not None:
                    await _finished(self._removal)  # (one spool on disk at a time)
                await context.send_initial_metadata((ACCEPTED, *offer))
                spool_dir = Path(
                    tempfile.mkdtemp(prefix="rlfleet-weights-", dir=self.config.spool_dir)
                )
            except BaseException:
                if listener is not None:
                    listener.close()
                raise
            try:
                spool = Spool(manifest, spool_dir / "update.safetensors", checksum=checksum)
                try:
                    if listener is None:
                        await self._receive(spool, first, messages)
                    else:
                        await self._receive_connection(spool, listener, first, messages)
                except CorruptStream as e:
                    raise DataLoss(str(e)) from None
                finally:
                    spool.close()
                received = time.perf_counter()
                self.metrics.update_seconds.labels("receive").observe(received - t0)
                update = WeightUpdate(manifest=manifest, path=spool.path)
                await _uncancelled(asyncio.ensure_future(self.engine.update_weights(update)))
                applied = time.perf_counter()
            finally:
                # Deleting a model's worth of file takes the file system a while (15 ms for
                # 256 MB): the call answers meanwhile. In the executor at once, so that it is
                # done even when the call is cancelled or the server is stopping.
                self._removal = asyncio.get_running_loop().run_in_executor(
                    None, shutil.rmtree, spool_dir, True
                )
        self.metrics.update_seconds.labels("apply").observe(applied - received)
        self.metrics.update_bytes.inc(manifest.nbytes)
        log.info(
            "weights: version %d applied (%d bytes, %s)",
            manifest.version,
            manifest.nbytes,
            "messages" if listener is None else "data connection",
        )
        return WeightUpdateResult(
            version=manifest.version,
            bytes=manifest.nbytes,
            receive_s=received - t0,
            apply_s=applied - received,
        )

    async def _receive(
        self, spool: Spool, first: pb.WeightChunk, messages: AsyncIterator[bytes]
    ) -> None:
        """Spool every chunk as it arrives, then check the stream is whole; raises
        ``CorruptStream`` or ``BadRequest``. Chunks are hashed and written in the spool's
        threads while the next ones are received: at most ``spool.depth`` are held there."""
        digest: str | None = None
        msg: memoryview | pb.WeightChunk | None = first
        try:
            while msg is not None:
                if digest is not None:
                    raise BadRequest("checksum", "only in the last message")
                if isinstance(msg, memoryview):
                    data: memoryview | bytes = msg
                else:
                    if msg is not first and msg.HasField("begin"):
                        raise BadRequest("begin", "only in the first message")
                    data = msg.data
                    digest = digest_from_pb(msg, first.begin)
                if data:
                    await spool.put(data)
                raw = await anext(messages, None)
                msg = None if raw is None else weight_chunk_from_bytes(raw)
            await spool.drain()
        finally:
            # The spool is closed next: never under a write in progress.
            await _uncancelled(asyncio.ensure_future(spool.drain(quiet=True)))
        spool.finish(digest)

    def _listen(self) -> DataListener | None:
        """A data connection's listener for one update, if the server offers them."""
        if self.data_host is None:
            return None
        try:
            return DataListener(self.data_host, self.config.data_timeout_s)
        except OSError as e:
            log.warning("weights: no data connection (%s); the data comes in messages", e)
            return None

    async def _receive_connection(
        self,
        spool: Spool,
        listener: DataListener,
        first: pb.WeightChunk,
        messages: AsyncIterator[bytes],
    ) -> None:
        """The data over ``listener``'s connection (in a thread), the checksum in the call's
        last message; raises ``CorruptStream`` or ``BadRequest`` as ``_receive`` does. The
        first of the two to fail ends the other."""
        data = asyncio.ensure_future(
            asyncio.to_thread(listener.receive, spool, self.config.data_buffer_bytes)
        )
        control = asyncio.ensure_future(_checksum_message(messages, first.begin))
        try:
            pending: set[asyncio.Future[Any]] = {data, control}
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if (error := task.exception()) is not None:
                        raise error
                if control in done and control.result() is None:
                    # Nothing can make the update whole now, whatever the connection brings.
                    raise CorruptStream("truncated: the stream ended before its checksum")
            digest = control.result()
        finally:
            control.cancel()
            if not data.done():
                listener.abort()
            # The spool is closed next: never under the thread still writing to it.
            await _finished(data)
            listener.close()
        spool.finish(digest)

    # -- Weights by broadcast -----------------------------------------------------------------

    def _receiver(self) -> BroadcastReceiver:
        engine = self.engine
        if not isinstance(engine, BroadcastReceiver) or engine.broadcast_ranks < 1:
            name = engine.status().engine
            raise FailedPrecondition(
                f"this rollout server's engine ({name}) cannot receive weights by broadcast "
                "(the torch engine and --engine sglang --sglang-surface http can); push them "
                "with UpdateWeights"
            )
        return engine

    async def JoinWeightGroup(
        self, request: pb.WeightGroup, context: grpc.aio.ServicerContext
    ) -> pb.JoinWeightGroupResult:
        group = weight_group_from_pb(request)
        receiver = self._receiver()
        ranks = receiver.broadcast_ranks
        if group.world_size < group.rank_offset + ranks:
            raise BadRequest(
                "world_size",
                f"{group.world_size} is too small: this server brings {ranks} rank(s) from "
                f"rank_offset {group.rank_offset}",
            )
        async with self._updating:
            self._group = None
            await _uncancelled(asyncio.ensure_future(receiver.join_weight_group(group)))
            self._group = group.group_name
        log.info(
            "weights: joined group %s at %s:%d (%s, ranks %d..%d of %d)",
            group.group_name,
            group.master_address,
            group.master_port,
            group.backend,
            group.rank_offset,
            group.rank_offset + ranks - 1,
            group.world_size,
        )
        return pb.JoinWeightGroupResult(ranks=ranks)

    async def BroadcastWeights(
        self, request: pb.BroadcastWeightsRequest, context: grpc.aio.ServicerContext
    ) -> pb.WeightUpdateResult:
        outcome = "rejected"
        self.metrics.update_started.set_to_current_time()
        try:
            result = await self._broadcast_update(request, context)
            outcome = "applied"
            return update_result_to_pb(result)
        except (BadRequest, FailedPrecondition, NotFound, asyncio.CancelledError):
            raise
        except Exception:
            outcome = "failed"
            # The engine may hold a broken group: the learner joins a new one.
            self._group = None
            raise
        finally:
            self.metrics.updates.labels(outcome).inc()
            self.metrics.update_started.set(0)

    async def _broadcast_update(
        self, request: pb.BroadcastWeightsRequest, context: grpc.aio.ServicerContext
    ) -> WeightUpdateResult:
        t0 = time.perf_counter()
        manifest, group_name = broadcast_manifest_from_pb(request)
        receiver = self._receiver()
        async with self._updating:
            if group_name != self._group:
                raise NotFound(
                    f"group_name: {group_name!r} is not the weight group this server is in "
                    f"({self._group or 'none'}): join it first (JoinWeightGroup)"
                )
            serving = self.engine.status().version
            if manifest.version <= serving:
                raise FailedPrecondition(
                    f"version: {manifest.version} is not newer than the version serving ({serving})"
                )
            try:
                self.engine.check_manifest(manifest)
            except WeightMismatch as e:
                raise BadRequest("tensors", str(e)) from None
            # Tells the learner to broadcast: a refusal is the call's status instead, sent
            # before any tensor is on the way.
            await context.send_initial_metadata((ACCEPTED,))
            work = asyncio.ensure_future(receiver.receive_weights(manifest, group_name))
            work.add_done_callback(_log_failure(f"weights: version {manifest.version}"))
            await _uncancelled(work)
        done = time.perf_counter()
        self.metrics.update_seconds.labels("receive").observe(done - t0)
        self.metrics.update_bytes.inc(manifest.nbytes)
        log.info(
            "weights: version %d applied (%d bytes, broadcast in %s)",
            manifest.version,
            manifest.nbytes,
            group_name,
        )
        # (Received and loaded in one engine call: the whole of it counts as receiving.)
        return WeightUpdateResult(
            version=manifest.version, bytes=manifest.nbytes, receive_s=done - t0, apply_s=0.0
        )

    # -- Status -----------------------------------------------------------------------------

    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusResponse:
        return status_to_pb(self.engine.status())


def _cut_at_stop(text: str, stop: tuple[str, ...], finish: FinishReason) -> str:
    """The text up to the stop string that ended it (stop strings are not returned)."""
    if finish is not FinishReason.STOP or not stop:
        return text
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else text


def build_rollout_server(
    server: ServerConfig,
    service: ServiceConfig,
    engine: Engine,
    verifier: Verifier | None,
    registry: CollectorRegistry,
) -> tuple[Server, RolloutService]:
    """A bound, not yet started server with the rollout service on it."""
    # (The data plane has no TLS of its own: a server with TLS keeps every byte on gRPC.)
    data_host = server.host if server.tls_cert is None else None
    servicer = RolloutService(engine, verifier, registry, service, data_host)
    srv = build_server(server, lambda s: _register(servicer, s), [SERVICE_NAME])
    return srv, servicer


def _register(servicer: RolloutService, server: grpc.aio.Server) -> None:
    """As ``add_RolloutServicer_to_server``, except that UpdateWeights takes its messages
    undecoded: data chunks are read straight out of the received bytes
    (``convert.weight_chunk_from_bytes``)."""
    handlers = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            servicer.Generate,
            request_deserializer=pb.GenerateRequest.FromString,
            response_serializer=pb.Completion.SerializeToString,
        ),
        "UpdateWeights": grpc.stream_unary_rpc_method_handler(
            servicer.UpdateWeights,
            response_serializer=pb.WeightUpdateResult.SerializeToString,
        ),
        "Status": grpc.unary_unary_rpc_method_handler(
            servicer.Status,
            request_deserializer=pb.StatusRequest.FromString,
            response_serializer=pb.StatusResponse.SerializeToString,
        ),
        "JoinWeightGroup": grpc.unary_unary_rpc_method_handler(
            servicer.JoinWeightGroup,
            request_deserializer=pb.WeightGroup.FromString,
            response_serializer=pb.JoinWeightGroupResult.SerializeToString,
        ),
        "BroadcastWeights": grpc.unary_unary_rpc_method_handler(
            servicer.BroadcastWeights,
            request_deserializer=pb.BroadcastWeightsRequest.FromString,
            response_serializer=pb.WeightUpdateResult.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


async def _aclose(chunks: AsyncIterator[TokenChunk]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()
