"""The built-in ``torch`` engine: an HF-format causal LM through transformers, on the CPU or
one GPU, with continuous batching.

One background thread owns the model and runs the loop (the event loop never waits on
torch): between two decode steps it applies a pending weight update, drops the sequences
whose callers went away, and prefills queued requests into free rows; then it decodes one
token for every row and hands the tokens to the waiting ``generate`` iterators, one
``call_soon_threadsafe`` per step.

Conventions (the same as SGLang's):
- A sequence ends on the tokenizer's end-of-sequence token(s), a stop token id or a stop
  string (finish reason STOP), or after ``max_new_tokens`` (LENGTH). The token that ended
  it is kept in the token ids, with its logprob: it was sampled, and the learner scores it.
  Stop strings are matched on the decoded completion; cutting the text there is the
  caller's (``stops.cut_at_stop``).
- A prompt plus its completion fits in ``max_seq_len`` tokens: a longer prompt is refused
  (``ValueError``), a completion that reaches the limit ends with LENGTH.
- A weight update lands between two steps; sequences in flight go on with the new weights
  and their next chunks carry the new version.

Weights by broadcast (``BroadcastReceiver``, one rank): the engine joins a learner's weight
group (gloo on the CPU, NCCL on a GPU), receives a version's tensors in a worker thread while
the loop goes on decoding with the old weights, then the loop copies them in between two
steps as it does a pushed file. Peak extra memory: one copy of the pushed tensors.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from rlfleet.rollout.engine import EngineError, WeightMismatch, WeightUpdate
from rlfleet.rollout.records import (
    DType,
    EngineStatus,
    FinishReason,
    SampleRequest,
    TokenChunk,
    WeightGroup,
    WeightManifest,
)
from rlfleet.rollout.stops import StopMatcher
from rlfleet.rollout.torch_batch import DecodeBatch, NewRow
from rlfleet.rollout.weight_group import join_group, receive_tensors

log = logging.getLogger(__name__)

TORCH_DTYPES = {
    DType.FLOAT32: torch.float32,
    DType.FLOAT16: torch.float16,
    DType.BFLOAT16: torch.bfloat16,
}
SAFETENSORS_DTYPES = {DType.FLOAT32: "F32", DType.FLOAT16: "F16", DType.BFLOAT16: "BF16"}


@dataclass(frozen=True, kw_only=True)
class ReceivedWeights:
    """A version received by broadcast, whole, waiting to be copied in between two steps."""

    manifest: WeightManifest
    tensors: dict[str, torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class TorchEngineConfig:
    model: Path
    """HF-format model directory (config, safetensors weights, tokenizer.json)."""
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights, activations and KV cache; logprobs are always computed in float32."""
    max_batch: int = 64
    """Sequences decoded together (rows of the KV cache); more wait in the queue."""
    max_seq_len: int = 2048
    """Prompt plus completion, in tokens (the KV cache is allocated for it up front)."""
    version: int = 0
    """Policy version of the weights in ``model``."""
    threads: int | None = None
    """Intra-op CPU threads of the engine's loop thread (``torch.set_num_threads`` there
    only: OpenMP and MKL keep the count per thread); None: torch's default. On a small
    model, 1 is faster: its operations are too small to split, and a second OpenMP team
    (the one that loaded the model, or another user of torch in the process) waiting
    beside the loop's own slowed every step measurably on a 2-core machine."""
    compile: bool = False
    """Compile the decode step (the model up to the logits) with ``torch.compile`` when the
    engine starts, before it takes requests: 12-50 s on 2 CPU cores for the tiny preset
    (inductor needs a C++ compiler there), then a third to a half less time per step on a
    small model, whose step is mostly per-operation overhead (docs/torch_engine.md).
    Sampling and prefill stay eager; logprobs equal eager ones to float32 rounding, and so
    do the tokens (a draw could differ only if its uniform number fell within that rounding
    of a boundary). If compiling fails the engine logs why and runs eager."""
    flush_interval_s: float = 0.005
    """Tokens are handed to the callers at most this often (and whenever a sequence
    finishes): waking every caller after every step costs as much as the step on a small
    model. 0: after every step."""
    broadcast_timeout_s: float = 120.0
    """Bound on joining a learner's weight group and on each tensor's broadcast."""

    def __post_init__(self) -> None:
        if self.broadcast_timeout_s <= 0:
            raise ValueError("broadcast_timeout_s: must be > 0")
        if self.max_batch < 1:
            raise ValueError("max_batch: must be >= 1")
        if self.max_seq_len < 2:
            raise ValueError("max_seq_len: must be >= 2")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads: must be >= 1")
        if self.flush_interval_s < 0:
            raise ValueError("flush_interval_s: must be >= 0")


class HFTokenizer:
    """The model directory's ``tokenizer.json``, exactly: ``PreTrainedTokenizerFast``, not
    ``AutoTokenizer`` (which swaps in an architecture's own class for some directories and
    re-tokenises differently). Decoding skips special tokens."""

    def __init__(self, model_dir: Path) -> None:
        self._tok = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
        self._backend = self._tok.backend_tokenizer

    @property
    def eos_token_id(self) -> int | None:
        eos = self._tok.eos_token_id
        return eos if isinstance(eos, int) else None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text))

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._backend.decode(list(token_ids), skip_special_tokens=True))


@dataclass(eq=False)
class _Stream:
    """One sequence: what the caller asked, what it has got, where its tokens go."""

    request: SampleRequest
    queue: asyncio.Queue[list[tuple[int, float, int] | FinishReason]]
    """Lists of (token, logprob, version) items, one list per delivery; the finish reason
    last."""
    stop_ids: frozenset[int]
    max_new_tokens: int
    stops: StopMatcher | None
    seed: int
    generated: list[int] = field(default_factory=list)


class TokenStream:
    """One sequence's chunks as the loop decodes them (an ``AsyncIterator[TokenChunk]``);
    the last carries the finish reason. ``aclose`` before that frees its row at the next
    step (a stream dropped unclosed is decoded to its end, and its tokens dropped: no
    finaliser reaches into the loop's lists, which a collection could run in the middle of
    the loop's own work on them)."""

    def __init__(self, engine: TorchEngine, stream: _Stream) -> None:
        self._engine = engine
        self._stream = stream
        self._ready: deque[TokenChunk] = deque()
        self._finished = False

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> TokenChunk:
        queue = self._stream.queue
        while not self._ready:
            if self._finished:
                raise StopAsyncIteration
            items = await queue.get()
            while not queue.empty():
                items += queue.get_nowait()
            self._ready.extend(_chunks(items, self._engine.version))
        chunk = self._ready.popleft()
        if chunk.finish_reason is not None:
            self._finished = True
            self._ready.clear()
        return chunk

    async def aclose(self) -> None:
        if not self._finished:
            self._finished = True
            self._engine._cancel(self._stream)


class TorchEngine:
    """``Engine`` over transformers (see the module docstring)."""

    def __init__(self, config: TorchEngineConfig) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self._tokenizer = HFTokenizer(config.model)
        self.model = AutoModelForCausalLM.from_pretrained(
            str(config.model),
            dtype=getattr(torch, config.dtype),
            attn_implementation="sdpa",  # (the masks built here are boolean, as sdpa takes)
        ).eval()
        self.model.to(self.device)  # (in place)
        self._dtype = next(self.model.parameters()).dtype
        # Every name a pushed tensor may have: tied weights answer to both of theirs.
        self._params = dict(self.model.named_parameters(remove_duplicate=False))
        self._batch = DecodeBatch(
            self.model,
            slots=config.max_batch,
            max_len=config.max_seq_len,
            compile=config.compile,
        )
        self._eos_ids = self._eos_token_ids()
        self._version = config.version

        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = threading.Condition()
        self._queued: list[_Stream] = []  # guarded by _wake
        self._cancelled: set[_Stream] = set()  # guarded by _wake
        # guarded by _wake:
        self._updates: list[tuple[WeightUpdate | ReceivedWeights, asyncio.Future[None]]] = []
        self._group: tuple[str, torch.distributed.ProcessGroup] | None = None
        """The weight group joined last (name, group)."""
        self._stopping = False
        self._failed: str | None = None
        self._running: list[_Stream] = []  # row i of the batch; the loop thread's own
        self._pending: list[tuple[_Stream, tuple[int, float, int] | FinishReason]] = []
        self._flushed_at = 0.0  # (the loop thread's own, like _pending)
        self._started = threading.Event()  # set once the loop thread is ready to serve
        self._thread = threading.Thread(target=self._run, name="torch-engine", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._failed is not None:
            raise EngineError(f"the torch engine failed to start ({self._failed})")

    # -- the Engine protocol (called on the event loop) --

    @property
    def tokenizer(self) -> HFTokenizer:
        return self._tokenizer

    @property
    def version(self) -> int:
        return self._version

    @property
    def vocab_size(self) -> int:
        return self._batch.vocab_size

    def generate(self, request: SampleRequest) -> TokenStream:
        return self.generate_many([request])[0]

    def generate_many(self, requests: Sequence[SampleRequest]) -> list[TokenStream]:
        """The requests join the queue at once, in order (see ``Engine.generate_many``)."""
        return [TokenStream(self, s) for s in self._submit(requests)]

    def check_manifest(self, manifest: WeightManifest) -> None:
        for spec in manifest.tensors:
            param = self._params.get(spec.name)
            if param is None:
                raise WeightMismatch(f"{spec.name}: not a parameter of the model")
            if tuple(param.shape) != spec.shape:
                raise WeightMismatch(
                    f"{spec.name}: shape {list(spec.shape)}, the model's is {list(param.shape)}"
                )
            if TORCH_DTYPES[spec.dtype] != self._dtype:
                raise WeightMismatch(
                    f"{spec.name}: dtype {spec.dtype}, the model's is {_dtype_name(self._dtype)}"
                )

    async def update_weights(self, update: WeightUpdate) -> None:
        self.check_manifest(update.manifest)
        done: asyncio.Future[None] = self._bind_loop().create_future()
        with self._wake:
            self._raise_if_unusable()
            self._updates.append((update, done))
            self._wake.notify()
        await done

    # -- weights by broadcast (BroadcastReceiver) --

    broadcast_ranks = 1
    """One rank: the model lives on one device."""

    @property
    def _broadcast_backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    async def join_weight_group(self, group: WeightGroup) -> None:
        if group.backend != self._broadcast_backend:
            raise EngineError(
                f"the torch engine on {self.device} takes {self._broadcast_backend} weight "
                f"groups, not {group.backend}"
            )
        timeout = timedelta(seconds=self.config.broadcast_timeout_s)
        device = self.device if self.device.type == "cuda" else None
        self._group = None
        joined = await asyncio.to_thread(join_group, group, timeout, device)
        self._group = (group.group_name, joined)

    async def receive_weights(self, manifest: WeightManifest, group_name: str) -> None:
        self.check_manifest(manifest)
        if self._group is None or self._group[0] != group_name:
            raise EngineError(f"weight group {group_name}: not the one this engine joined")
        group = self._group[1]
        timeout = timedelta(seconds=self.config.broadcast_timeout_s)
        dtypes = {d.value: t for d, t in TORCH_DTYPES.items()}
        try:
            tensors = await asyncio.to_thread(
                receive_tensors, group, manifest, dtypes, self.device, timeout
            )
        except Exception as e:
            # The group is broken (a peer gone, a timeout): the learner joins anew.
            self._group = None
            raise EngineError(f"receiving weights by broadcast failed: {e}") from e
        done: asyncio.Future[None] = self._bind_loop().create_future()
        with self._wake:
            self._raise_if_unusable()
            self._updates.append((ReceivedWeights(manifest=manifest, tensors=tensors), done))
            self._wake.notify()
        await done

    def status(self) -> EngineStatus:
        return EngineStatus(
            engine="torch",
            model=str(self.config.model),
            version=self._version,
            running=len(self._running),
            queued=len(self._queued),
            device=str(self.device),
            broadcast_ranks=self.broadcast_ranks,
        )

    async def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        await asyncio.to_thread(self._thread.join)
        # The loop has stopped: whoever still waits gets ABORT (and updates an error).
        for stream in (*self._running, *self._queued):
            stream.queue.put_nowait([FinishReason.ABORT])
        for _, done in self._updates:
            if not done.done():
                done.set_exception(EngineError("the engine closed before applying the update"))
        self._running, self._queued, self._updates = [], [], []

    # -- submission (event loop side) --

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop.is_closed():
            self._loop = loop
        elif self._loop is not loop:
            raise EngineError("the torch engine serves one event loop; this is another")
        return loop

    def _raise_if_unusable(self) -> None:
        if self._failed is not None:
            raise EngineError(f"the torch engine failed ({self._failed}); restart the server")
        if self._stopping:
            raise EngineError("the torch engine is closed")

    def _submit(self, requests: Sequence[SampleRequest]) -> list[_Stream]:
        """Every request checked, then all queued under one hold of the lock: the loop
        admits none of them before all are in the queue."""
        self._bind_loop()
        streams = [self._stream(r) for r in requests]
        with self._wake:
            self._raise_if_unusable()
            self._queued += streams
            self._wake.notify()
        return streams

    def _stream(self, request: SampleRequest) -> _Stream:
        prompt_len = len(request.prompt_token_ids)
        room = self.config.max_seq_len - prompt_len
        if prompt_len == 0:
            raise ValueError(f"{request.key}: empty prompt")
        if room < 1:
            raise ValueError(
                f"{request.key}: prompt of {prompt_len} tokens leaves no room for a completion "
                f"(max_seq_len {self.config.max_seq_len})"
            )
        vocab = self._batch.vocab_size
        if min(request.prompt_token_ids) < 0 or max(request.prompt_token_ids) >= vocab:
            raise ValueError(f"{request.key}: prompt token ids must be in [0, {vocab})")
        sampling = request.sampling
        return _Stream(
            request=request,
            queue=asyncio.Queue(),
            stop_ids=self._eos_ids | frozenset(sampling.stop_token_ids),
            max_new_tokens=min(sampling.max_new_tokens, room),
            stops=StopMatcher(sampling.stop) if sampling.stop else None,
            seed=secrets.randbits(63) if sampling.seed is None else sampling.seed,
        )

    def _cancel(self, stream: _Stream) -> None:
        with self._wake:
            if stream in self._queued:
                self._queued.remove(stream)
            else:
                self._cancelled.add(stream)
                self._wake.notify()

    def _eos_token_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        if self._tokenizer.eos_token_id is not None:
            ids.add(self._tokenizer.eos_token_id)
        generation = getattr(self.model, "generation_config", None)
        eos = getattr(generation, "eos_token_id", None)
        ids.update([eos] if isinstance(eos, int) else (eos or []))
        return frozenset(ids)

    # -- the loop (its own thread) --

    def _run(self) -> None:
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)  # (this thread's count)
        try:
            with torch.inference_mode():
                try:
                    self._warm_up()
                finally:
                    self._started.set()
                while self._iterate():
                    pass
        except Exception as e:  # the thread's top: a crash must end every stream
            # Not a result: every sequence in flight ends with ABORT and the engine refuses
            # new work, instead of callers waiting forever on a dead thread.
            log.exception("torch engine loop failed")
            self._failed = f"{type(e).__name__}: {e}"
            self._abort_all()

    def _warm_up(self) -> None:
        """Compile the decode step here, on the loop thread, under the same inference mode
        and thread count as the steps that will use it."""
        if not self._batch.compiled:
            return
        from torch._dynamo.exc import BackendCompilerFailed  # (loaded by torch.compile)

        started = time.monotonic()
        try:
            self._batch.warm_up()
        except BackendCompilerFailed as e:
            # Not a result: the same steps run eager, only slower.
            inner = e.inner_exception
            reason = f"{type(inner).__name__}: {(str(inner).strip().splitlines() or [''])[0]}"
            log.warning("torch engine: compiling the decode step failed, running eager: %s", reason)
            self._batch = DecodeBatch(
                self.model,
                slots=self.config.max_batch,
                max_len=self.config.max_seq_len,
            )
            return
        log.info("torch engine: decode step compiled in %.1f s", time.monotonic() - started)

    def _iterate(self) -> bool:
        """One turn: updates, departures, arrivals, one decode step. False: stop."""
        with self._wake:
            while not (
                self._stopping or self._updates or self._cancelled or self._queued or self._running
            ):
                self._wake.wait()
            if self._stopping:
                self._flush()
                return False
            updates, self._updates = self._updates, []
            cancelled, self._cancelled = self._cancelled, set()
            arriving = self._queued[: self._batch.free]
            del self._queued[: len(arriving)]
        for update, done in updates:
            self._apply(update, done)
        if cancelled:
            self._remove([i for i, s in enumerate(self._running) if s in cancelled])
        finished = False
        if arriving:
            tokens, logprobs = self._batch.add([_new_row(s) for s in arriving])
            self._running += arriving
            finished |= self._emit(arriving, tokens.tolist(), logprobs.tolist())
        if self._running:
            tokens, logprobs = self._batch.step()
            finished |= self._emit(self._running, tokens.tolist(), logprobs.tolist())
        if (
            finished
            or not self._running
            or time.monotonic() - self._flushed_at >= self.config.flush_interval_s
        ):
            self._flush()
        return True

    def _flush(self) -> None:
        self._deliver(self._pending)
        self._pending = []
        self._flushed_at = time.monotonic()

    def _emit(
        self,
        streams: Sequence[_Stream],
        tokens: Sequence[int],
        logprobs: Sequence[float],
    ) -> bool:
        """Queue the step's tokens for their callers; True if a sequence finished."""
        out = self._pending
        finished = []
        for stream, token, logprob in zip(streams, tokens, logprobs, strict=True):
            stream.generated.append(token)
            out.append((stream, (token, logprob, self._version)))
            reason = self._finish_reason(stream, token)
            if reason is not None:
                out.append((stream, reason))
                finished.append(stream)
        if finished:
            gone = set(finished)
            self._remove([i for i, s in enumerate(self._running) if s in gone])
        return bool(finished)

    def _finish_reason(self, stream: _Stream, token: int) -> FinishReason | None:
        if token in stream.stop_ids:
            return FinishReason.STOP
        if stream.stops is not None and stream.stops.found(
            self._tokenizer.decode(stream.generated)
        ):
            return FinishReason.STOP
        if len(stream.generated) >= stream.max_new_tokens:
            return FinishReason.LENGTH
        return None

    def _remove(self, rows: list[int]) -> None:
        for dst, src in self._batch.remove(rows):
            self._running[dst] = self._running[src]
        del self._running[self._batch.n :]

    def _deliver(self, out: list[tuple[_Stream, tuple[int, float, int] | FinishReason]]) -> None:
        if out and self._loop is not None:
            self._call_soon(_put_all, out)

    def _call_soon(self, fn: object, *args: object) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)  # type: ignore[arg-type]
        except RuntimeError:
            # The event loop is closed: nobody is left to read the tokens.
            log.debug("event loop closed; dropped a delivery")

    def _apply(self, update: WeightUpdate | ReceivedWeights, done: asyncio.Future[None]) -> None:
        """Load the update's tensors into the model, one at a time (peak extra memory: one
        tensor). Everything is checked from the file's header before the first copy."""
        if isinstance(update, ReceivedWeights):
            # (Received whole and checked against the manifest already.)
            with torch.no_grad():
                for name, tensor in update.tensors.items():
                    self._params[name].copy_(tensor)
            self._version = update.manifest.version
            self._call_soon(_settle, done, None)
            return
        try:
            names = _check_file(update, self._dtype)
        except (WeightMismatch, OSError) as e:
            self._call_soon(_settle, done, e)
            return
        try:
            with safe_open(str(update.path), framework="pt", device=str(self.device)) as f:
                for name in names:
                    self._params[name].copy_(f.get_tensor(name))
        except OSError as e:
            # Some tensors are new, some old: this model must not serve again.
            self._call_soon(_settle, done, EngineError(f"weight update failed midway: {e}"))
            raise
        self._version = update.manifest.version
        self._call_soon(_settle, done, None)

    def _abort_all(self) -> None:
        with self._wake:
            streams = [*self._running, *self._queued]
            updates, self._updates = self._updates, []
            self._running, self._queued = [], []
        self._deliver([*self._pending, *((s, FinishReason.ABORT) for s in streams)])
        self._pending = []
        error = EngineError(f"the torch engine failed ({self._failed})")
        for _, done in updates:
            self._call_soon(_settle, done, error)


def _new_row(stream: _Stream) -> NewRow:
    sampling = stream.request.sampling
    return NewRow(
        prompt=stream.request.prompt_token_ids,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        seed=stream.seed,
        max_new_tokens=stream.max_new_tokens,
    )


def _check_file(update: WeightUpdate, dtype: torch.dtype) -> list[str]:
    """The update's file holds exactly the manifest's tensors, as the manifest says."""
    manifest = update.manifest
    with safe_open(str(update.path), framework="pt", device="cpu") as f:
        present = set(f.keys())
        names = [t.name for t in manifest.tensors]
        if present != set(names):
            extra, missing = sorted(present - set(names)), sorted(set(names) - present)
            raise WeightMismatch(
                f"{update.path.name}: tensors differ from the manifest "
                f"(missing {missing[:3]}, unexpected {extra[:3]})"
            )
        for spec in manifest.tensors:
            view = f.get_slice(spec.name)
            if tuple(view.get_shape()) != spec.shape:
                raise WeightMismatch(f"{spec.name}: the file's shape differs from the manifest")
            if view.get_dtype() != SAFETENSORS_DTYPES[spec.dtype]:
                raise WeightMismatch(f"{spec.name}: the file's dtype differs from the manifest")
    return names


def _dtype_name(dtype: torch.dtype) -> str:
    return next(d.value for d, t in TORCH_DTYPES.items() if t == dtype)


def _put_all(out: Iterable[tuple[_Stream, tuple[int, float, int] | FinishReason]]) -> None:
    # One put (one wakeup of the caller) per stream and delivery, not per token.
    by_stream: dict[_Stream, list[tuple[int, float, int] | FinishReason]] = {}
    for stream, item in out:
        by_stream.setdefault(stream, []).append(item)
    for stream, items in by_stream.items():
        stream.queue.put_nowait(items)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


def _chunks(
    items: Sequence[tuple[int, float, int] | FinishReason], current: int
) -> Iterable[TokenChunk]:
    """Merge consecutive tokens of one version into a chunk; the finish reason rides on the
    last one (alone, with no tokens and the ``current`` version, when the sequence was
    aborted)."""
    tokens: list[int] = []
    logprobs: list[float] = []
    version: int | None = None
    for item in items:
        if isinstance(item, FinishReason):
            yield TokenChunk(
                token_ids=tuple(tokens),
                logprobs=tuple(logprobs),
                version=current if version is None else version,
                finish_reason=item,
            )
            return
        token, logprob, v = item
        if version is not None and v != version:
            yield TokenChunk(token_ids=tuple(tokens), logprobs=tuple(logprobs), version=version)
            tokens, logprobs = [], []
        tokens.append(token)
        logprobs.append(logprob)
        version = v
    if tokens:
        assert version is not None
        yield TokenChunk(token_ids=tuple(tokens), logprobs=tuple(logprobs), version=version)
