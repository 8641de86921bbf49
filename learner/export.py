"""The learner's weights leaving it: full tensors gathered from the FSDP shards, a few at a
time, under Hugging Face names; an HF-format directory the rollout engines load; and the
push of those tensors to rollout servers.

Gathering is a collective: every rank runs ``iter_full_tensors`` to its end, in the same
order; rank 0 alone receives the tensors. Memory on rank 0 stays bounded by a bucket (plus
the largest tensor), never the whole model.

Tied embeddings: a parameter shared by two modules is exported once, under its first name
(``model.embed_tokens.weight``, not ``lm_head.weight``), as ``save_pretrained`` stores it;
the engines tie the head again from ``tie_word_embeddings`` in the config.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from rlfleet.rollout.client import DEFAULT_BUCKET_BYTES, RolloutClient
from rlfleet.rollout.records import DType, TensorSpec, WeightUpdateResult
from rlfleet.rollout.weights import StreamSource

WRAPPER_SEGMENTS = ("_checkpoint_wrapped_module", "_orig_mod", "_fsdp_wrapped_module")
"""Name parts that activation checkpointing, ``torch.compile`` and FSDP1 insert into a
parameter's name; HF names have none of them."""

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.safetensors.index.json", "*.bin.index.json")
"""Files of a source model directory that the export replaces rather than copies."""


def hf_name(fqn: str) -> str:
    """A parameter's name as the unwrapped HF model spells it."""
    return ".".join(part for part in fqn.split(".") if part not in WRAPPER_SEGMENTS)


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def exported_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters to export, under HF names, each shared parameter once."""
    return [(hf_name(n), p) for n, p in model.named_parameters()]


def tensor_specs(model: nn.Module, dtype: torch.dtype | None = None) -> list[TensorSpec]:
    """What ``iter_full_tensors(model, dtype=dtype)`` yields, known without gathering (a
    sharded parameter reports its full shape)."""
    return [
        TensorSpec(
            name=name,
            dtype=DType(str(dtype or p.dtype).removeprefix("torch.")),
            shape=tuple(p.shape),
        )
        for name, p in exported_parameters(model)
    ]


def iter_full_tensors(
    model: nn.Module,
    *,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(hf_name, full tensor)`` for every exported parameter, in ``exported_parameters``
    order, on rank 0; nothing on the other ranks, which must still run it to its end (each
    sharded parameter is one all-gather). Tensors are gathered until a bucket of
    ``bucket_bytes`` is full, then copied together to ``device`` (None: the host) and
    handed out."""
    if bucket_bytes < 1:
        raise ValueError("bucket_bytes: must be >= 1")
    main = _is_main()
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, p in exported_parameters(model):
        with torch.no_grad():
            full = p.full_tensor() if isinstance(p, DTensor) else p.detach()
            if dtype is not None:
                full = full.to(dtype)
        if not main:
            continue
        bucket.append((name, full))
        size += full.nbytes
        if size >= bucket_bytes:
            yield from _copied(bucket, device)
            bucket, size = [], 0
    yield from _copied(bucket, device)


def _copied(
    bucket: list[tuple[str, torch.Tensor]], device: torch.device | None
) -> Iterator[tuple[str, torch.Tensor]]:
    # A copy even where the tensor already is: the caller may keep it while the model
    # trains on.
    host = [(name, t.to(device or "cpu", copy=True)) for name, t in bucket]
    bucket.clear()
    while host:
        yield host.pop(0)


class _Locked(Iterator[tuple[str, torch.Tensor]]):
    """An iterator that one thread at a time may advance: a push reads the gather from
    worker threads, and one may still be inside ``next`` when the rest is drained."""

    def __init__(self, stream: Iterator[tuple[str, torch.Tensor]]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def __next__(self) -> tuple[str, torch.Tensor]:
        with self._lock:
            return next(self._stream)


def drain(stream: Iterator[object]) -> None:
    """Run a gathering stream to its end (the other ranks' side of a push or an export)."""
    for _ in stream:
        pass


def write_safetensors(
    path: Path,
    specs: Sequence[TensorSpec],
    stream: Iterator[tuple[str, torch.Tensor]],
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> None:
    """Write ``stream`` (pairs matching ``specs``, in order) as one safetensors file, holding
    a bucket at a time. The file is the push's wire format behind a header."""
    from rlfleet.rollout.weights import safetensors_header

    with path.open("wb") as f:
        f.write(safetensors_header(specs))
        for view in StreamSource(specs, stream).buckets(bucket_bytes):
            f.write(view)


def export_hf_dir(
    model: nn.Module,
    out_dir: Path,
    *,
    source_dir: Path,
    dtype: torch.dtype | None = None,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> None:
    """Write the model as an HF-format directory at ``out_dir`` (replaced if it exists):
    ``source_dir``'s config, generation config and tokenizer files, and the learner's weights
    in ``model.safetensors``. Collective: every rank calls it; rank 0 writes. The directory
    appears whole or not at all (written beside it, then renamed)."""
    specs = tensor_specs(model, dtype)
    stream = iter_full_tensors(model, bucket_bytes=bucket_bytes, dtype=dtype)
    if not _is_main():
        drain(stream)
        return
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    for f in sorted(source_dir.iterdir()):
        if f.is_file() and not any(f.match(pattern) for pattern in WEIGHT_FILES):
            shutil.copy2(f, partial / f.name)
    if dtype is not None and (partial / "config.json").exists():
        config = json.loads((partial / "config.json").read_text())
        config["dtype"] = str(dtype).removeprefix("torch.")
        config.pop("torch_dtype", None)  # (the older name of the same field)
        (partial / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_safetensors(partial / "model.safetensors", specs, stream, bucket_bytes)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)


async def push_weights(
    clients: Sequence[RolloutClient],
    model: nn.Module,
    version: int,
    *,
    dtype: torch.dtype | None = None,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    spool_dir: Path | None = None,
) -> list[WeightUpdateResult]:
    """Push the model's full weights as policy ``version`` to every client; collective (every
    rank calls it, rank 0 pushes and gets the results, the others get ``[]``). The first
    client that fails raises (``push_weights_each`` returns each client's outcome instead).

    With ``spool_dir`` None and one client, the tensors stream straight from the gather into
    the push (nothing on disk; a push is then not retried, since a gather cannot be read
    twice). Otherwise rank 0 first writes them to ``spool_dir/model.safetensors`` (a bucket
    at a time), then pushes that file to all clients in parallel (each push retried as the
    client does). Either way the gather ends on every rank before this returns, so a
    failed push never leaves another rank waiting in a collective."""
    specs = tensor_specs(model, dtype)
    stream = iter_full_tensors(model, bucket_bytes=bucket_bytes, dtype=dtype)
    if not _is_main():
        drain(stream)
        return []
    if spool_dir is None:
        if len(clients) != 1:
            raise ValueError("clients: streaming pushes to one client; give spool_dir for more")
        stream = _Locked(stream)
        source = StreamSource(specs, stream)
        try:
            return [await clients[0].push_weights(source, version, bucket_bytes)]
        finally:
            # (The push reads the stream in worker threads, one item at a time; once it has
            # ended none is reading, and the rest of the gather runs here.)
            await asyncio.to_thread(drain, stream)
    spool_dir.mkdir(parents=True, exist_ok=True)
    path = spool_dir / "model.safetensors"
    await asyncio.to_thread(write_safetensors, path, specs, stream, bucket_bytes)
    try:
        return list(
            await asyncio.gather(
                *(c.push_weights(spool_dir, version, bucket_bytes) for c in clients)
            )
        )
    finally:
        path.unlink(missing_ok=True)


async def push_weights_each(
    clients: Sequence[RolloutClient],
    model: nn.Module,
    version: int,
    *,
    spool_dir: Path,
    dtype: torch.dtype | None = None,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> list[WeightUpdateResult | Exception]:
    """``push_weights`` through ``spool_dir`` to all clients in parallel, each client's
    result or the error it failed with (one server down does not stop the others). The
    spool is written (and the gather done on every rank) whatever the clients do; rank
    0 gets one outcome per client, the other ranks ``[]``."""
    specs = tensor_specs(model, dtype)
    stream = iter_full_tensors(model, bucket_bytes=bucket_bytes, dtype=dtype)
    if not _is_main():
        drain(stream)
        return []
    spool_dir.mkdir(parents=True, exist_ok=True)
    path = spool_dir / "model.safetensors"
    await asyncio.to_thread(write_safetensors, path, specs, stream, bucket_bytes)
    try:
        outcomes = await asyncio.gather(
            *(c.push_weights(spool_dir, version, bucket_bytes) for c in clients),
            return_exceptions=True,
        )
    finally:
        path.unlink(missing_ok=True)
    out: list[WeightUpdateResult | Exception] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome  # (cancellation, KeyboardInterrupt: not a server's failure)
        out.append(outcome)
    return out
