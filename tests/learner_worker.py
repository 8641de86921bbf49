"""One learner process for tests/test_learner_fsdp.py, run under torch.distributed.run (or
alone, as a world of one): a few FSDP2 steps on fixed batches, writing what the test
compares (losses, full gradients, parameters, logits, an HF export, a checkpoint) to a
directory, and optionally pushing the weights to a rollout server.

    python tests/learner_worker.py '{"model": DIR, "out": DIR, "mode": "train"|"resume", ...}'
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

from rlfleet.learner.broadcast import BroadcastPusher, PushConfig
from rlfleet.learner.checkpoint import TrainerState, load_checkpoint, save_checkpoint
from rlfleet.learner.distributed import DistConfig, DistContext, distributed
from rlfleet.learner.export import drain, export_hf_dir, iter_full_tensors, push_weights
from rlfleet.learner.optim import OptimConfig, build_optimizer, build_scheduler, clip_gradients
from rlfleet.learner.parallelize import ParallelConfig, parallelize
from rlfleet.learner.pool import PoolConfig, PushReport, RolloutPool
from rlfleet.rollout.client import RolloutClient
from rlfleet.rollout.records import WeightUpdateResult

BATCH, SEQ = 4, 12
STEPS_BEFORE_SAVE = 3
OPTIM = OptimConfig(lr=1e-2, warmup_steps=2, max_grad_norm=1.0)


def build(args: dict[str, Any], ctx: DistContext, parallel: ParallelConfig) -> Any:
    model = AutoModelForCausalLM.from_pretrained(args["model"], dtype=torch.float32)
    return parallelize(model, ctx.mesh, parallel)


def next_batch(vocab: int) -> torch.Tensor:
    # From the global generator (seeded alike on every rank): a resumed run draws the same
    # batches only if the RNG state came back too.
    return torch.randint(0, vocab, (BATCH, SEQ))


def step(model: Any, optimizer: Any, scheduler: Any, ctx: DistContext) -> dict[str, Any]:
    """One optimizer step on this rank's share of the next batch; the global mean loss."""
    ids = next_batch(model.config.vocab_size)  # [B, S]
    share = BATCH // ctx.world_size
    local = ids[ctx.rank * share : (ctx.rank + 1) * share]  # [B / world, S]
    loss = model(input_ids=local, labels=local).loss
    loss.backward()
    grads = {
        n: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).clone()
        for n, p in model.named_parameters()
    }
    norm = clip_gradients(model, OPTIM.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    total = loss.detach().clone()
    dist.all_reduce(total)
    return {
        "loss": total.item() / ctx.world_size,
        "norm": norm,
        "grads": grads,
        "draws": [random.random(), torch.rand(()).item()],
    }


def main(args: dict[str, Any]) -> None:
    out = Path(args["out"])
    with distributed(DistConfig(device=args.get("device", "cpu"), timeout_s=60)) as ctx:
        if args["mode"] == "extras":
            extras(args, ctx, out)
            return
        if args["mode"] == "gpu":
            gpu(args, ctx, out)
            return
        if args["mode"] == "broadcast":
            broadcast(args, ctx, out)
            return
        random.seed(1)
        torch.manual_seed(1)
        model = build(args, ctx, ParallelConfig())
        optimizer = build_optimizer(model, OPTIM)
        scheduler = build_scheduler(optimizer, OPTIM)
        steps = []
        if args["mode"] == "train":
            steps = [step(model, optimizer, scheduler, ctx) for _ in range(STEPS_BEFORE_SAVE)]
            save_checkpoint(
                out / "ckpt",
                TrainerState(step=STEPS_BEFORE_SAVE, data_position=STEPS_BEFORE_SAVE),
                model,
                optimizer,
                scheduler,
            )
        else:
            state = load_checkpoint(Path(args["checkpoint"]), model, optimizer, scheduler)
            assert state.step == STEPS_BEFORE_SAVE, state
        steps.append(step(model, optimizer, scheduler, ctx))  # the step after the checkpoint
        gathered = dict(iter_full_tensors(model, bucket_bytes=10_000))
        full = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        probe = torch.arange(20).reshape(2, 10) % model.config.vocab_size
        with torch.no_grad():
            logits = model(input_ids=probe).logits
        export_hf_dir(model, out / "hf", source_dir=Path(args["model"]), bucket_bytes=10_000)
        results = []
        if args.get("push"):
            results = asyncio.run(push_all(args["push"], model, ctx, out))
        if ctx.is_main:
            torch.save(
                {
                    "steps": steps,
                    "gathered": gathered,
                    "full": full,
                    "probe": probe,
                    "logits": logits,
                    "lr": scheduler.get_last_lr(),
                    "pushed": [r.version for r in results],
                },
                out / f"{args['mode']}.pt",
            )


async def push_all(target: str, model: Any, ctx: DistContext, out: Path) -> list[Any]:
    """Version 1 streamed straight from the gather, version 2 through a spool file."""
    if not ctx.is_main:
        await push_weights([], model, 1)
        await push_weights([], model, 2, spool_dir=out / "spool")
        return []
    async with RolloutClient(target) as client:
        first = await push_weights([client], model, 1, bucket_bytes=3000)
        second = await push_weights([client], model, 2, spool_dir=out / "spool")
        return first + second


def extras(args: dict[str, Any], ctx: DistContext, out: Path) -> None:
    """Activation checkpointing changes no number; bf16 compute runs on CPU."""
    ids = torch.randint(0, 100, (2, SEQ), generator=torch.Generator().manual_seed(3))
    found: dict[str, Any] = {}
    for name, parallel in {
        "plain": ParallelConfig(),
        "ac": ParallelConfig(activation_checkpointing=True),
        "bf16": ParallelConfig(param_dtype="bfloat16", reduce_dtype="bfloat16"),
    }.items():
        model = build(args, ctx, parallel)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = {
            n: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            for n, p in model.named_parameters()
        }
        gathered = dict(iter_full_tensors(model))
        found[name] = {"loss": loss.item(), "grads": grads, "names": sorted(gathered)}
    if ctx.is_main:
        torch.save(found, out / "extras.pt")


def broadcast(args: dict[str, Any], ctx: DistContext, out: Path) -> None:
    """Versions 1 and 2 (a step between them) pushed by broadcast to the pool
    ``args["targets"]`` (rank 0; the other ranks join the gathers), and the full state dict
    of each version."""
    torch.manual_seed(1)
    model = build(args, ctx, ParallelConfig())
    optimizer = build_optimizer(model, OPTIM)
    scheduler = build_scheduler(optimizer, OPTIM)
    config = PushConfig(transport="distributed", timeout_s=args.get("timeout_s", 30.0))
    pusher = BroadcastPusher(config, ctx.device, call_timeout_s=60.0)
    full = []
    reports: list[PushReport] = []

    async def pushes() -> None:
        pool = RolloutPool(",".join(args["targets"]), PoolConfig(push_timeout_s=60.0))
        try:
            for version in (1, 2):
                if ctx.is_main:

                    async def each(
                        clients: Sequence[RolloutClient], v: int = version
                    ) -> list[WeightUpdateResult | Exception]:
                        return await pusher.push(clients, model, v)

                    reports.append(await pool.push(version, each))
                else:
                    await asyncio.to_thread(drain, iter_full_tensors(model))
                state = get_model_state_dict(
                    model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
                )
                full.append(state)
                if version == 1:
                    step(model, optimizer, scheduler, ctx)
        finally:
            await pool.close()

    asyncio.run(pushes())
    if ctx.is_main:
        torch.save(
            {
                "full": full,
                "reports": [
                    {"served": r.served, "failed": r.failed, "bytes": r.bytes} for r in reports
                ],
            },
            out / "broadcast.pt",
        )


def gpu(args: dict[str, Any], ctx: DistContext, out: Path) -> None:
    """NCCL, bf16 compute (the CUDA default), steps, a checkpoint round trip and a bf16
    export, on the GPU."""
    torch.manual_seed(1)
    model = build(args, ctx, ParallelConfig())
    optimizer = build_optimizer(model, OPTIM)
    ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ), device=ctx.device)
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        clip_gradients(model, OPTIM.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    path = save_checkpoint(out / "ckpt", TrainerState(step=5), model, optimizer)
    assert load_checkpoint(path, model, optimizer).step == 5
    gathered = dict(iter_full_tensors(model, dtype=torch.bfloat16))
    export_hf_dir(model, out / "hf", source_dir=Path(args["model"]), dtype=torch.bfloat16)
    if ctx.is_main:
        torch.save(
            {
                "losses": losses,
                "device": str(next(model.parameters()).device),
                "dtypes": sorted({str(t.dtype) for t in gathered.values()}),
                "devices": sorted({t.device.type for t in gathered.values()}),
            },
            out / "gpu.pt",
        )


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
    # The group is torn down and the results are written and closed. Leave without the
    # interpreter's own teardown: under heavy load a rank once aborted there ("terminate
    # called without an active exception", SIGABRT) after all of its work was done, as
    # C++ objects of the process group were destroyed at exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
