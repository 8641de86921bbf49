"""The ``sglang`` engine: SGLang as a subprocess behind the ``Engine`` Protocol.

Never imports sglang (it runs in its own process, on a CUDA machine). Two generation
surfaces, chosen at start:

- ``grpc`` (default): SGLang's gRPC scheduler API (``SglangScheduler``, the generated
  client of smg-grpc-proto). The pinned SGLang serves it in its model-gateway mode
  (``--smg-grpc-mode``), which replaces the HTTP server: generation, abort, health, loads
  and cache flushes only. That mode has no weight-update call and no per-request seed, so
  ``update_weights`` refuses with an error saying so and samples are not seeded.
- ``http``: SGLang's HTTP server: the ``/generate`` stream, and weights updated in place
  between decode steps through ``update_weights_from_disk`` (or the tensor / NCCL routes),
  wrapped in ``pause_generation(mode="retract")`` / ``continue_generation``. The NCCL route is
  what the rollout service's BroadcastWeights drives (``BroadcastReceiver``). Sequences in
  flight are retracted and resume on the new weights; SGLang's per-token version spans tag
  their chunks. Per-sample seeds need SGLang's deterministic mode (on by default here).

docs/sglang.md has the pinned version's flags, routes, fields and pitfalls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlfleet.rollout.engine import EngineError, Tokenizer, WeightUpdate
from rlfleet.rollout.records import (
    DType,
    EngineStatus,
    FinishReason,
    SampleRequest,
    SamplingParams,
    TokenChunk,
    WeightGroup,
    WeightManifest,
)
from rlfleet.rollout.sglang_grpc import SchedulerClient
from rlfleet.rollout.sglang_http import SglangHttp
from rlfleet.rollout.sglang_process import SglangProcess
from rlfleet.rollout.sglang_weights import check_manifest, model_parameters, stage_update

Surface = Literal["grpc", "http"]

HTTP_FINISH = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "abort": FinishReason.ABORT,
}

TORCH_DTYPE_NAMES = {DType.FLOAT32: "float32", DType.FLOAT16: "float16", DType.BFLOAT16: "bfloat16"}
"""Our dtypes as SGLang's update_weights_from_distributed names them (torch attribute names)."""


@dataclass(frozen=True, kw_only=True)
class SglangEngineConfig:
    model_dir: Path
    """HF-format model directory (config, tokenizer, *.safetensors) SGLang serves."""
    surface: Surface = "grpc"
    """Generation over SGLang's gRPC scheduler API, or its HTTP ``/generate`` stream."""
    python: str = sys.executable
    """Interpreter that has sglang installed (the launcher's default command)."""
    launcher: tuple[str, ...] = ()
    """Command that starts the server, before the flags this adapter adds; empty:
    ``(python, "-m", "sglang.launch_server")``. Tests start a fake here."""
    host: str = "127.0.0.1"
    port: int = 0
    """SGLang's HTTP port; 0: a free one."""
    grpc_port: int = 0
    """SGLang's gRPC port (surface grpc); 0: a free one."""
    extra_args: tuple[str, ...] = ()
    """More launch flags (``--tp-size 2``, ``--mem-fraction-static 0.8``, ...)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment added to the server's (``CUDA_VISIBLE_DEVICES``, ...)."""
    deterministic: bool = True
    """Surface http: start SGLang with ``--enable-deterministic-inference`` so each
    sample's ``sampling_seed`` decides its tokens (every sample gets its own seed)."""
    initial_version: int = 0
    """Policy version of the weights in ``model_dir`` (SGLang's ``--weight-version``)."""
    start_timeout_s: float = 900.0
    """Bound on the wait for the server to become healthy (model load, CUDA graphs)."""
    request_timeout_s: float = 300.0
    """Bound on a control call, and on the wait for each streamed message."""
    update_timeout_s: float = 600.0
    """Bound on one weight-update call."""
    stop_timeout_s: float = 30.0
    """Grace between SIGTERM and SIGKILL at close."""
    work_dir: Path | None = None
    """Where updates are staged for SGLang to load and its log is written (must be
    readable by the server); None: a temporary directory removed at close."""

    def __post_init__(self) -> None:
        if self.surface not in ("grpc", "http"):
            raise ValueError(f"surface: {self.surface!r} is not grpc or http")
        if self.start_timeout_s <= 0:
            raise ValueError("start_timeout_s: must be > 0")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def launch_argv(config: SglangEngineConfig, port: int, grpc_port: int) -> list[str]:
    """The server's command line for the pinned SGLang (flags in docs/sglang.md)."""
    argv = list(config.launcher) or [config.python, "-m", "sglang.launch_server"]
    argv += [
        "--model-path", str(config.model_dir),
        "--host", config.host,
        "--port", str(port),
        "--weight-version", str(config.initial_version),
    ]  # fmt: skip
    if config.surface == "grpc":
        # The model-gateway server (SglangScheduler), in place of the HTTP one. Not
        # --enable-deterministic-inference: this API cannot carry a seed, and in that mode
        # every unseeded request shares seed 42, so all n samples of a prompt would match.
        argv += ["--smg-grpc-mode", "--grpc-port", str(grpc_port)]
    elif config.deterministic:
        argv += ["--enable-deterministic-inference"]
    return argv + list(config.extra_args)


def flag_value(argv: Sequence[str], names: Sequence[str]) -> str | None:
    """The value of the last of ``names`` in ``argv`` (``--flag V`` or ``--flag=V``)."""
    found = None
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                found = argv[i + 1]
            elif arg.startswith(name + "="):
                found = arg[len(name) + 1 :]
    return found


def tensor_parallel_ranks(extra_args: Sequence[str]) -> int:
    """Ranks SGLang brings to a weight group: one per tensor-parallel rank (each joins as
    ``rank_offset + tp_rank``); 0 where another parallelism would give ranks the same
    number (pipeline or data parallel above 1)."""
    for names in (("--pp-size", "--pipeline-parallel-size"), ("--dp-size", "--data-parallel-size")):
        value = flag_value(extra_args, names)
        if value is not None and int(value) > 1:
            return 0
    value = flag_value(extra_args, ("--tp-size", "--tensor-parallel-size", "--tp"))
    return int(value) if value is not None else 1


def sample_seed(request: SampleRequest) -> int:
    """The request's own seed, or one drawn from its unique key: SGLang's deterministic
    mode gives every unseeded request the same seed, so n samples would be identical."""
    if request.sampling.seed is not None:
        return request.sampling.seed
    digest = hashlib.sha256(request.key.encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def http_sampling_params(params: SamplingParams, seed: int) -> dict[str, Any]:
    """SGLang's JSON sampling params (unknown keys are refused by its contract)."""
    out: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "sampling_seed": seed,
    }
    if params.top_k > 0:
        out["top_k"] = params.top_k
    if params.stop:
        out["stop"] = list(params.stop)
    if params.stop_token_ids:
        out["stop_token_ids"] = list(params.stop_token_ids)
    return out


def parse_version(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise EngineError(
            f"SGLang reports weight version {value!r}, not one this service set"
        ) from None


class HfTokenizer:
    """The model directory's tokenizer, loaded as ``PreTrainedTokenizerFast``: transformers
    5's ``AutoTokenizer`` swaps in a slow class for some model types and re-tokenises."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import PreTrainedTokenizerFast

        self._tok = PreTrainedTokenizerFast.from_pretrained(str(model_dir))

    @property
    def eos_token_id(self) -> int | None:
        eos = self._tok.eos_token_id
        return eos if isinstance(eos, int) else None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(token_ids), skip_special_tokens=True))


class SglangEngine:
    """Start with ``await SglangEngine.start(config)``; ``await close()`` stops SGLang."""

    def __init__(
        self,
        config: SglangEngineConfig,
        process: SglangProcess,
        http: SglangHttp,
        scheduler: SchedulerClient | None,
        tokenizer: Tokenizer,
        params: dict[str, tuple[str, tuple[int, ...]]],
        work_dir: Path,
        own_work_dir: bool,
    ) -> None:
        self.config = config
        self._process = process
        self._http = http
        self._scheduler = scheduler
        self._tokenizer = tokenizer
        self._params = params
        self._work_dir = work_dir
        self._own_work_dir = own_work_dir
        self._version = config.initial_version
        self._running = 0
        self._ids = itertools.count()
        self._update_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def start(cls, config: SglangEngineConfig) -> SglangEngine:
        params = model_parameters(config.model_dir)
        tokenizer = HfTokenizer(config.model_dir)
        own = config.work_dir is None
        work_dir = Path(tempfile.mkdtemp(prefix="rlfleet-sglang-")) if own else config.work_dir
        assert work_dir is not None
        work_dir.mkdir(parents=True, exist_ok=True)
        port = config.port or free_port(config.host)
        grpc_port = config.grpc_port or free_port(config.host)
        http = SglangHttp(config.host, port, timeout_s=config.request_timeout_s)
        scheduler = (
            SchedulerClient(f"{config.host}:{grpc_port}", timeout_s=config.request_timeout_s)
            if config.surface == "grpc"
            else None
        )
        process = await SglangProcess.start(
            launch_argv(config, port, grpc_port), env=config.env, log_path=work_dir / "sglang.log"
        )
        engine = cls(config, process, http, scheduler, tokenizer, params, work_dir, own)
        try:
            probe = scheduler.healthy if scheduler is not None else http.healthy
            await process.wait_healthy(probe, timeout_s=config.start_timeout_s)
        except BaseException:
            await engine.close()
            raise
        return engine

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def version(self) -> int:
        return self._version

    @property
    def pid(self) -> int:
        """The server's process (and process group) id."""
        return self._process.pid

    # -- generation ----------------------------------------------------------------------------

    def _rid(self, request: SampleRequest) -> str:
        # SGLang refuses a request id already in flight; a key reused across calls stays
        # unique with the counter.
        return f"{request.key}#{next(self._ids)}"

    def generate_many(
        self, requests: Sequence[SampleRequest]
    ) -> Sequence[AsyncIterator[TokenChunk]]:
        # (SGLang's scheduler batches the requests as they reach it.)
        return [self.generate(r) for r in requests]

    async def generate(self, request: SampleRequest) -> AsyncGenerator[TokenChunk, None]:
        if self._closed:
            raise EngineError("the sglang engine is closed")
        inner = (
            self._generate_grpc(self._scheduler, request)
            if self._scheduler is not None
            else self._generate_http(request)
        )
        self._running += 1
        try:
            # aclosing: a caller closing this iterator must reach SGLang (abort) now,
            # not when the inner generator is collected.
            async with contextlib.aclosing(inner):
                async for chunk in inner:
                    yield chunk
        finally:
            self._running -= 1

    async def _generate_grpc(
        self, scheduler: SchedulerClient, request: SampleRequest
    ) -> AsyncGenerator[TokenChunk, None]:
        # The gateway mode has no weight updates: every token is of the starting version.
        pieces = scheduler.generate(self._rid(request), request.prompt_token_ids, request.sampling)
        try:
            async for piece in pieces:
                yield TokenChunk(
                    token_ids=piece.token_ids,
                    logprobs=piece.logprobs,
                    version=self._version,
                    finish_reason=piece.finish_reason,
                )
        finally:
            await pieces.aclose()

    async def _generate_http(self, request: SampleRequest) -> AsyncGenerator[TokenChunk, None]:
        rid = self._rid(request)
        body = {
            "rid": rid,
            "input_ids": list(request.prompt_token_ids),
            "sampling_params": http_sampling_params(request.sampling, sample_seed(request)),
            "return_logprob": True,
            "stream": True,
        }
        sent = 0
        finished = False
        events = self._http.generate_stream(body)
        try:
            async for event in events:
                chunks, sent, finished = stream_event_chunks(event, sent)
                for chunk in chunks:
                    yield chunk
                if finished:
                    return
            raise EngineError("SGLang /generate: [DONE] before a finish reason")
        finally:
            await events.aclose()
            if not finished:
                # Dropping the connection also aborts it in SGLang; the explicit call
                # frees the slot at once.
                with contextlib.suppress(EngineError, OSError):
                    await self._http.abort_request(rid)

    # -- weights -------------------------------------------------------------------------------

    def check_manifest(self, manifest: WeightManifest) -> None:
        check_manifest(manifest, self._params)

    def _require_http_weights(self) -> None:
        if self.config.surface != "http":
            raise EngineError(
                "the sglang engine's grpc surface cannot update weights: the pinned SGLang "
                "serves its gRPC scheduler API only in --smg-grpc-mode, which has no "
                "weight-update call and no HTTP server; start it with surface http"
            )

    async def update_weights(self, update: WeightUpdate) -> None:
        """Disk path (``WeightUpdate.path`` is on this host): stage a directory holding the
        model's config and the update's file, then pause (retract), load, continue."""
        self._require_http_weights()
        self.check_manifest(update.manifest)
        async with self._update_lock:
            staged = stage_update(
                self.config.model_dir,
                update.path,
                self._work_dir / f"update-{update.manifest.version}",
            )
            try:
                await self._paused_update(
                    lambda: self._http.update_weights_from_disk(
                        model_path=str(staged), weight_version=str(update.manifest.version)
                    ),
                    session=False,
                )
            finally:
                shutil.rmtree(staged, ignore_errors=True)
            self._version = update.manifest.version

    async def init_weights_update_group(
        self,
        *,
        master_address: str,
        master_port: int,
        rank_offset: int,
        world_size: int,
        group_name: str = "weight_update_group",
        backend: str = "nccl",
    ) -> None:
        """Join the learner's process group for NCCL broadcasts of new weights (SGLang's
        ranks are ``rank_offset ..``; the learner is rank 0). The learner calls this once,
        concurrently with its own ``init_process_group``."""
        self._require_http_weights()
        await asyncio.wait_for(
            self._http.init_weights_update_group(
                master_address=master_address,
                master_port=master_port,
                rank_offset=rank_offset,
                world_size=world_size,
                group_name=group_name,
                backend=backend,
            ),
            self.config.update_timeout_s,
        )

    async def update_weights_from_distributed(
        self, manifest: WeightManifest, *, group_name: str = "weight_update_group"
    ) -> None:
        """Receive the manifest's tensors from the learner's NCCL broadcast (the learner
        broadcasts them in manifest order while this call waits), inside a weight-update
        session and a pause, as SGLang requires."""
        self._require_http_weights()
        self.check_manifest(manifest)
        async with self._update_lock:
            await self._paused_update(
                lambda: self._http.update_weights_from_distributed(
                    names=[t.name for t in manifest.tensors],
                    dtypes=[TORCH_DTYPE_NAMES[t.dtype] for t in manifest.tensors],
                    shapes=[list(t.shape) for t in manifest.tensors],
                    group_name=group_name,
                    weight_version=str(manifest.version),
                ),
                session=True,
            )
            self._version = manifest.version

    # -- weights by broadcast (the rollout service's JoinWeightGroup / BroadcastWeights) ------

    @property
    def broadcast_ranks(self) -> int:
        """SGLang's tensor-parallel ranks on the http surface (the grpc one takes no
        weights); 0 with pipeline or data parallelism."""
        if self.config.surface != "http":
            return 0
        return tensor_parallel_ranks(self.config.extra_args)

    async def join_weight_group(self, group: WeightGroup) -> None:
        await self.init_weights_update_group(
            master_address=group.master_address,
            master_port=group.master_port,
            rank_offset=group.rank_offset,
            world_size=group.world_size,
            group_name=group.group_name,
            backend=group.backend,
        )

    async def receive_weights(self, manifest: WeightManifest, group_name: str) -> None:
        await self.update_weights_from_distributed(manifest, group_name=group_name)

    async def _paused_update(self, call: Callable[[], Awaitable[object]], *, session: bool) -> None:
        """pause(retract) -> [begin] -> the update call -> [end] -> continue. Generation
        continues whatever happened: on failure SGLang keeps (or rolls back to) the old
        weights, and the error says what it answered. Retract, not abort: the requests in
        flight go back to SGLang's queue and resume on the new weights; not in_place: that
        mode cannot flush the cache the old weights filled."""
        timeout = self.config.update_timeout_s
        try:
            await asyncio.wait_for(self._http.pause_generation("retract"), timeout)
            try:
                if session:
                    await asyncio.wait_for(self._http.begin_weight_update(), timeout)
                    try:
                        await asyncio.wait_for(call(), timeout)
                    finally:
                        await asyncio.wait_for(self._http.end_weight_update(), timeout)
                else:
                    await asyncio.wait_for(call(), timeout)
            finally:
                await asyncio.wait_for(self._http.continue_generation(), timeout)
        except TimeoutError:
            raise EngineError(f"SGLang weight update did not finish within {timeout:g} s") from None

    # -- state ---------------------------------------------------------------------------------

    def status(self) -> EngineStatus:
        return EngineStatus(
            engine="sglang",
            model=str(self.config.model_dir),
            version=self._version,
            running=self._running,
            queued=0,
            device=f"sglang ({self.config.surface}) pid {self._process.pid}",
            broadcast_ranks=self.broadcast_ranks,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._process.stop(self.config.stop_timeout_s)
        finally:
            if self._scheduler is not None:
                await self._scheduler.close()
            if self._own_work_dir:
                shutil.rmtree(self._work_dir, ignore_errors=True)


def stream_event_chunks(event: Mapping[str, Any], sent: int) -> tuple[list[TokenChunk], int, bool]:
    """The new tokens of one cumulative ``/generate`` stream event (tokens past ``sent``),
    split where SGLang's ``meta_info.weight_versions`` spans say the version changed.
    Returns the chunks, the new count sent, and whether the sequence finished."""
    meta = event.get("meta_info")
    if not isinstance(meta, Mapping):
        raise EngineError("SGLang /generate: event without meta_info")
    triples = meta.get("output_token_logprobs") or []
    output_ids = [int(t) for t in event.get("output_ids", [])]
    if len(triples) != len(output_ids):
        raise EngineError(
            f"SGLang /generate: {len(output_ids)} output ids came with {len(triples)} logprobs"
        )
    reason_obj = meta.get("finish_reason")
    reason: FinishReason | None = None
    if reason_obj is not None:
        kind = reason_obj.get("type") if isinstance(reason_obj, Mapping) else reason_obj
        if kind not in HTTP_FINISH:
            raise EngineError(f"SGLang /generate: unknown finish reason {reason_obj!r}")
        reason = HTTP_FINISH[kind]
    spans = meta.get("weight_versions") or [
        {"version": meta.get("weight_version"), "start": 0, "end": len(output_ids)}
    ]
    chunks: list[TokenChunk] = []
    for span in spans:
        start = max(int(span["start"]), sent)
        end = min(int(span["end"]), len(output_ids))
        if end <= start:
            continue
        for i in range(start, end):
            if int(triples[i][1]) != output_ids[i]:
                raise EngineError(f"SGLang /generate: logprob {i} is for another token")
        chunks.append(
            TokenChunk(
                token_ids=tuple(output_ids[start:end]),
                logprobs=tuple(float(t[0]) for t in triples[start:end]),
                version=parse_version(span["version"]),
            )
        )
        sent = end
    if sent != len(output_ids):
        raise EngineError("SGLang /generate: weight version spans do not cover the output")
    if reason is not None:
        if chunks:
            last = chunks[-1]
            chunks[-1] = TokenChunk(
                token_ids=last.token_ids,
                logprobs=last.logprobs,
                version=last.version,
                finish_reason=reason,
            )
        else:
            chunks.append(
                TokenChunk(
                    token_ids=(),
                    logprobs=(),
                    version=parse_version(meta.get("weight_version")),
                    finish_reason=reason,
                )
            )
    return chunks, sent, reason is not None
