"""``rlfleet bench rollout``: the torch engine's tokens/s against HF ``generate``, measured in
one run on the same model, batch, prompt and sampling.

Each batch size is measured ``repeats`` times, HF then the engine(s), interleaved, and the
best run of each is kept (the machine may be shared: the best is the least disturbed); the
ratios of the runs made side by side are printed too, as the spread. HF ``generate`` runs
``new_tokens`` steps for every row (end-of-sequence off), with its dynamic and its static
cache in every repeat, the faster counting (its best plain settings; neither won clearly
here). The engine serves ``batch`` concurrent ``generate`` calls through its public async
API, each for up to ``new_tokens`` tokens (a row that samples end-of-sequence stops early),
so tokens/s counts the tokens each actually produced; it is measured as configured by
default (eager) and with ``compile`` (its decode step through ``torch.compile``, compiled
before the timing starts: the engine compiles when it starts, not while it serves).

Both run on ``threads`` intra-op CPU threads (HF ``generate`` on the calling thread, the
engine on its loop thread): like for like. With 2 threads each on a 2-core machine, the two
OpenMP teams (the caller's and the engine's) slowed both sides two- to threefold and made
the figures mostly noise; 1 thread each measures the generation loops themselves.

The weight-push half (UpdateWeights against a raw loopback socket and a bare gRPC method
carrying the same bytes) is in ``weight_push_bench`` and runs after it.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel

from rlfleet.errors import UsageError
from rlfleet.rollout.model_init import write_model
from rlfleet.rollout.records import SampleRequest, SamplingParams
from rlfleet.rollout.torch_engine import TorchEngine, TorchEngineConfig

PROMPT = "What is 12 + 34? Let us think step by step."
CACHES: tuple[Literal["dynamic", "static"], ...] = ("dynamic", "static")
"""HF ``generate``'s caches, both measured in every repeat."""


EngineMode = Literal["eager", "compiled"]
BENCH_ENGINE_MODES: dict[str, tuple[EngineMode, ...]] = {
    "off": ("eager",),
    "on": ("compiled",),
    "both": ("eager", "compiled"),
}
"""``--compile`` choices: the engine configurations measured."""


@dataclass(frozen=True, kw_only=True)
class EngineFigures:
    batch: int
    new_tokens: int
    mode: EngineMode
    engine_tps: float
    """Best run."""
    hf_tps: float
    """Best run, either cache."""
    paired: tuple[float, ...]
    """Engine over HF tokens/s of each repeat (runs made side by side)."""
    startup_s: float
    """Seconds the engine took to start (for ``compiled``, mostly compiling)."""

    @property
    def ratio(self) -> float:
        return self.engine_tps / self.hf_tps


def hf_generate_tps(
    model: PreTrainedModel,
    prompt: Sequence[int],
    batch: int,
    new_tokens: int,
    cache: Literal["dynamic", "static"] = "dynamic",
) -> float:
    """New tokens/s of ``model.generate`` sampling ``new_tokens`` for ``batch`` rows."""
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt)] * batch, device=device)  # [B, P]
    config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        eos_token_id=None,
        pad_token_id=0,
        cache_implementation="static" if cache == "static" else None,
    )
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(  # type: ignore[operator]
            ids, attention_mask=torch.ones_like(ids), generation_config=config
        )
    _sync(device)
    return (out.shape[1] - len(prompt)) * batch / (time.perf_counter() - t0)


async def engine_tps(
    engine: TorchEngine, prompt: Sequence[int], batch: int, new_tokens: int
) -> float:
    """New tokens/s of ``batch`` concurrent ``generate`` calls (sampling, own seeds)."""

    async def one(i: int) -> int:
        req = SampleRequest(
            key=f"bench-{i}",
            prompt_token_ids=tuple(prompt),
            sampling=SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=i),
        )
        return sum([len(c.token_ids) async for c in engine.generate(req)])

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(batch)))
    return sum(counts) / (time.perf_counter() - t0)


async def measure_engine(
    model_dir: Path,
    *,
    batches: Sequence[int],
    new_tokens: int,
    device: Literal["cpu", "cuda"] = "cpu",
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    repeats: int = 3,
    threads: int | None = 1,
    modes: Sequence[EngineMode] = ("eager", "compiled"),
) -> list[EngineFigures]:
    engines: dict[EngineMode, TorchEngine] = {}
    startup: dict[EngineMode, float] = {}
    for mode in modes:
        t0 = time.perf_counter()
        engines[mode] = TorchEngine(
            TorchEngineConfig(
                model=model_dir,
                device=device,
                dtype=dtype,
                max_batch=max(batches),
                threads=threads,
                compile=mode == "compiled",
            )
        )
        startup[mode] = time.perf_counter() - t0
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)  # (HF generate runs on this thread)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=getattr(torch, dtype), attn_implementation="sdpa"
        ).eval()
        model.to(device)
        prompt = next(iter(engines.values())).tokenizer.encode(PROMPT)
        # Warm all (allocator, kernels, thread pools) before anything counts.
        for cache in CACHES:
            hf_generate_tps(model, prompt, min(batches), 8, cache)
        for engine in engines.values():
            await engine_tps(engine, prompt, min(batches), 8)
        figures = []
        for batch in batches:
            hf: list[float] = []
            ours: dict[EngineMode, list[float]] = {mode: [] for mode in engines}
            for _ in range(repeats):
                hf.append(max(hf_generate_tps(model, prompt, batch, new_tokens, c) for c in CACHES))
                for mode, engine in engines.items():
                    ours[mode].append(await engine_tps(engine, prompt, batch, new_tokens))
            figures += [
                EngineFigures(
                    batch=batch,
                    new_tokens=new_tokens,
                    mode=mode,
                    engine_tps=max(runs),
                    hf_tps=max(hf),
                    paired=tuple(e / h for e, h in zip(runs, hf, strict=True)),
                    startup_s=startup[mode],
                )
                for mode, runs in ours.items()
            ]
        return figures
    finally:
        torch.set_num_threads(before)
        for engine in engines.values():
            await engine.close()


async def run_rollout_bench(
    model_dir: Path | None,
    *,
    batches: Sequence[int] = (16, 64),
    new_tokens: int = 64,
    device: Literal["cpu", "cuda"] = "cpu",
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    repeats: int = 3,
    push_mb: int = 256,
    bucket_mb: int = 8,
    threads: int | None = 1,
    engine: bool = True,
    modes: Sequence[EngineMode] = ("eager", "compiled"),
) -> int:
    """Print the engine figures (a tiny model made here when ``model_dir`` is None; False
    ``engine``: skip), then the weight-push figures (``push_mb`` MB in ``bucket_mb`` MB
    buckets; 0: skip)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device here")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the figures are the output, not loading bars
    if model_dir is not None and not (model_dir / "config.json").is_file():
        raise UsageError(f"{model_dir}: not a model directory (no config.json)")
    if engine:
        await _engine_half(model_dir, batches, new_tokens, device, dtype, repeats, threads, modes)
    if push_mb:
        from rlfleet.bench.weight_push_bench import bench_weight_push

        push = await bench_weight_push(size_mb=push_mb, bucket_mb=bucket_mb, repeats=repeats)
        for line in push.lines():
            print(line)
        sys.stdout.flush()
    return 0


async def _engine_half(
    model_dir: Path | None,
    batches: Sequence[int],
    new_tokens: int,
    device: Literal["cpu", "cuda"],
    dtype: Literal["float32", "bfloat16", "float16"],
    repeats: int,
    threads: int | None,
    modes: Sequence[EngineMode],
) -> None:
    """Print the engine's tokens/s against HF ``generate``'s."""
    with tempfile.TemporaryDirectory(prefix="rlfleet-bench-") as tmp:
        if model_dir is None:
            model_dir = Path(tmp) / "tiny"
            write_model(model_dir, preset="tiny", seed=0)
            where = "tiny model (rlfleet model init --preset tiny)"
        else:
            where = str(model_dir)
        print(
            f"engine: {where}, {device} {dtype}, "
            f"{threads or torch.get_num_threads()} CPU thread(s) each, "
            f"{new_tokens} new tokens per sequence, sampling T=1, best of {repeats}; "
            "HF generate: the faster of its dynamic and static cache"
        )
        sys.stdout.flush()
        figures = await measure_engine(
            model_dir,
            batches=batches,
            new_tokens=new_tokens,
            device=device,
            dtype=dtype,
            repeats=repeats,
            threads=threads,
            modes=modes,
        )
    for mode in modes:
        if mode == "compiled":
            started = next(f.startup_s for f in figures if f.mode == mode)
            print(
                f"compiled: the engine with compile=True (its decode step through "
                f"torch.compile; started in {started:.1f} s, compiling included)"
            )
    for f in figures:
        name = "torch engine" if f.mode == "eager" else "compiled"
        print(
            f"batch {f.batch:>4}: {name:<12} {f.engine_tps:>9.0f} tok/s   "
            f"HF generate {f.hf_tps:>9.0f} tok/s   ratio {f.ratio:.2f}x "
            f"(side by side {min(f.paired):.2f}-{max(f.paired):.2f}x)"
        )
    sys.stdout.flush()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
