"""``rlfleet train``: the typed command behind the CLI.

A run directory holds (the run dir contract)::

    config.json       the resolved TrainConfig (``--resume`` reads it back)
    policy/           the initial model (the tiny preset, when no model is given)
    metrics.jsonl     one JSON object per step (``loop.StepRecord``)
    reward.png        the reward curve (rewritten at every checkpoint and at the end)
    checkpoints/      DCP checkpoints (``learner.checkpoint``)
    final/            the policy at the end, an HF-format directory both engines load
    logs/             the embedded servers' stderr
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rlfleet.errors import CommandError, Unavailable, UsageError
from rlfleet.learner.config import (
    ConfigError,
    TrainConfig,
    from_mapping,
    read_mapping,
    write_config,
)
from rlfleet.learner.data import DataError, LoadConfig, Task, load_tasks
from rlfleet.learner.loop import StepRecord, Trainer
from rlfleet.learner.pool import PoolConfig, RolloutPool
from rlfleet.learner.tasks import BuiltinConfig, builtin_tasks
from rlfleet.sandbox.client import VerifierClient

PREFIX = "rlfleet train"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "reward.png"
CHECKPOINTS = "checkpoints"
FINAL_DIR = "final"


@dataclass(frozen=True, kw_only=True)
class TrainCommand:
    config: TrainConfig
    run_dir: Path
    resume: bool = False
    """Continue the run in ``run_dir`` from its latest checkpoint."""


def progress(line: str) -> None:
    print(f"{PREFIX}: {line}", file=sys.stderr, flush=True)


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def resume_config(run_dir: Path, steps: int | None) -> TrainConfig:
    """The config a run was started with (``--steps`` may lengthen it)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"--resume {run_dir}: no {CONFIG_FILE} there (not a run directory)")
    try:
        config: TrainConfig = from_mapping(TrainConfig, read_mapping(path))
    except ConfigError as e:
        raise UsageError(str(e)) from None
    return replace(config, steps=steps) if steps is not None else config


def load_task_list(config: TrainConfig) -> list[Task]:
    if config.data.path is None:
        return builtin_tasks(BuiltinConfig(seed=config.seed))
    try:
        return load_tasks(config.data.path, LoadConfig(format=config.data.format))
    except (DataError, ValueError) as e:
        raise UsageError(str(e)) from None


def read_metrics(path: Path, before: int) -> list[dict[str, Any]]:
    """The records of steps < ``before`` (a run killed after its last checkpoint wrote
    steps the resumed run takes again)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # (a line cut off by a kill: the steps after it are taken again)
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int) and step < before:
            out.append(record)
    return out


Point = tuple[int, float, float]
"""(step, mean reward, wall seconds) of a step whose samples were scored."""


def curve(records: list[dict[str, Any]]) -> list[Point]:
    return [
        (int(r["step"]), float(r["reward_mean"]), float(r.get("wall_s", 0.0)))
        for r in records
        if r.get("reward_mean") is not None
    ]


def summary_lines(records: list[dict[str, Any]], run_dir: Path) -> list[str]:
    points = curve(records)
    if not points:
        return [f"no step finished; run dir {run_dir}"]
    first = [r for _, r, _ in points[:10]]
    last = [r for _, r, _ in points[-20:]]
    lines = [
        f"steps: {len(records)} (last {points[-1][0]}), {points[-1][2]:.0f} s of training",
        f"reward: {sum(first) / len(first):.3f} over the first {len(first)} steps, "
        f"{sum(last) / len(last):.3f} over the last {len(last)}",
    ]
    reached = next((p for p in points if p[1] >= 0.9), None)
    if reached is not None:
        lines.append(f"reward >= 0.9 first at step {reached[0]} ({reached[2]:.0f} s)")
    lines.append(f"run dir: {run_dir} ({METRICS_FILE}, {PLOT_FILE}, {CHECKPOINTS}/)")
    return lines


def _progress_line(r: StepRecord, steps: int) -> str:
    reward = "-" if r.reward_mean is None else f"{r.reward_mean:.3f}"
    return (
        f"step {r.step + 1}/{steps} reward {reward} | {r.time_step_s:.2f} s/step "
        f"(generate {r.time_generate_s:.2f}, reward {r.time_reward_s:.2f}, "
        f"train {r.time_train_s:.2f}, push {r.time_push_s:.2f}) | "
        f"{r.tokens_per_s:.0f} tok/s | verified {r.verified}/{r.unique_pairs} | "
        f"staleness {r.staleness} | {r.wall_s:.0f} s"
    )


async def train(cmd: TrainCommand) -> int:
    """Run (or resume) a training run; returns the exit code."""
    import torch

    from rlfleet.learner.checkpoint import latest_checkpoint, load_checkpoint
    from rlfleet.learner.distributed import distributed
    from rlfleet.learner.fleet import embedded_fleet
    from rlfleet.learner.optim import build_optimizer, build_scheduler
    from rlfleet.learner.parallelize import parallelize
    from rlfleet.learner.templates import get_template

    config, run_dir = cmd.config, cmd.run_dir
    # Under torchrun every rank runs this; rank 0 alone writes the run dir and talks to
    # the fleet (``learner.follow``), the others wait for it in the process group.
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        prepare_run_dir(cmd)
    try:
        template = get_template(config.template)
    except ValueError as e:
        raise UsageError(str(e)) from None
    tasks = load_task_list(config)
    model_dir = config.model or run_dir / "policy"
    if is_main and config.model is None and not (model_dir / "config.json").is_file():
        from rlfleet.rollout.model_init import write_model

        write_model(model_dir, preset="tiny", seed=config.seed)
    if is_main and not (model_dir / "config.json").is_file():
        raise UsageError(f"model {model_dir}: no config.json there (not an HF model directory)")

    fleet = config.fleet
    records: list[dict[str, Any]] = []
    async with AsyncExitStack() as stack:
        rollout: RolloutPool | None = None
        verifier: VerifierClient | None = None
        if is_main:
            targets = await stack.enter_async_context(
                embedded_fleet(
                    run_dir=run_dir,
                    model=model_dir,
                    rollout=fleet.rollout,
                    verifier=fleet.verifier,
                    sandbox_workers=fleet.sandbox_workers,
                    start_timeout_s=fleet.start_timeout_s,
                    rollout_threads=fleet.rollout_threads,
                )
            )
            if fleet.rollout is None or fleet.verifier is None:
                progress(f"embedded fleet: rollout {targets.rollout}, verifier {targets.verifier}")
            pool_config = PoolConfig(
                push_timeout_s=fleet.push_timeout_s, max_resends=fleet.max_resends
            )
            rollout = await stack.enter_async_context(RolloutPool(targets.rollout, pool_config))
            verifier = await stack.enter_async_context(VerifierClient(targets.verifier))
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if config.dist.device == "cpu":
            torch.set_num_threads(config.cpu_threads)
        with distributed(config.dist) as ctx:
            if ctx.world_size > 1:
                torch.distributed.barrier()  # (rank 0 has written the model)
            loaded = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
            model = parallelize(loaded.to(ctx.device), ctx.mesh, config.parallel)  # type: ignore[arg-type]
            reference = None
            if config.algorithm.kl_beta > 0:
                # The initial policy, frozen, sharded as the policy is (its forward is
                # collective too).
                frozen = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
                frozen.requires_grad_(False)
                reference = parallelize(frozen.to(ctx.device).eval(), ctx.mesh, config.parallel)  # type: ignore[arg-type]
            optimizer = build_optimizer(model, config.optim)
            scheduler = build_scheduler(optimizer, config.optim)
            broadcaster = None
            if ctx.is_main and config.push.transport == "distributed":
                from rlfleet.learner.broadcast import BroadcastPusher

                try:
                    broadcaster = BroadcastPusher(config.push, ctx.device, fleet.push_timeout_s)
                except ValueError as e:
                    raise UsageError(str(e)) from None
            start = 0
            latest = latest_checkpoint(run_dir / CHECKPOINTS)
            if cmd.resume and latest is not None:
                start = load_checkpoint(latest, model, optimizer, scheduler).step
            trainer = Trainer(
                config=config,
                tasks=tasks,
                template=template,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                rollout=rollout,
                verifier=verifier,
                device=ctx.device,
                spool_dir=run_dir / "spool",
                checkpoint_dir=run_dir / CHECKPOINTS,
                reference=reference,
                broadcaster=broadcaster,
            )
            if ctx.is_main:
                records = await lead(trainer, cmd, start, latest)
            else:
                await trainer.follow()
            from rlfleet.learner.export import export_hf_dir

            export_hf_dir(model, run_dir / FINAL_DIR, source_dir=model_dir)
    if is_main:
        for line in summary_lines(records, run_dir):
            print(line, flush=True)
    return 0


def prepare_run_dir(cmd: TrainCommand) -> None:
    """Check the run dir (a new run's is empty; a resumed one is a run dir) and write the
    config of a new run into it."""
    from rlfleet.learner.checkpoint import latest_checkpoint

    run_dir = cmd.run_dir
    if cmd.resume:
        if (
            latest_checkpoint(run_dir / CHECKPOINTS) is None
            and not (run_dir / CONFIG_FILE).is_file()
        ):
            raise UsageError(f"--resume {run_dir}: not a run directory")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--run-dir {run_dir}: not a directory")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UsageError(f"--run-dir {run_dir}: not empty; continue it with --resume {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cmd.config, run_dir / CONFIG_FILE)


async def lead(
    trainer: Trainer, cmd: TrainCommand, start: int, latest: Path | None
) -> list[dict[str, Any]]:
    """Rank 0's part of a run: the loop, ``metrics.jsonl``, progress, checkpoints, the
    plot and the metrics port; returns the run's step records."""
    from rlfleet.learner.checkpoint import TrainerState
    from rlfleet.learner.metrics import serve_metrics

    config, run_dir = cmd.config, cmd.run_dir
    records = read_metrics(run_dir / METRICS_FILE, start)
    metrics_path = run_dir / METRICS_FILE
    metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    async with serve_metrics(
        config.metrics_port, config.metrics_host, max_staleness=config.rollout.max_staleness
    ) as prometheus:

        async def on_step(record: StepRecord) -> None:
            records.append(record.to_json())
            prometheus.observe(record)
            with metrics_path.open("a") as f:
                f.write(json.dumps(record.to_json()) + "\n")
            done = record.step + 1
            if done == 1 or done % config.log_every == 0 or done == config.steps:
                progress(_progress_line(record, config.steps))
            if done % config.checkpoint_every == 0 or done == config.steps:
                state = TrainerState(
                    step=done, data_position=done * config.rollout.prompts_per_step
                )
                await trainer.save(state)
                plot(run_dir, records)

        if start > 0:
            progress(f"resuming at step {start + 1} from {latest}")
        try:
            await trainer.run(start, config.steps, on_step)
        except Unavailable as e:
            raise CommandError(str(e)) from None
    return records


def plot(run_dir: Path, records: list[dict[str, Any]]) -> None:
    from rlfleet.learner.plot import write_reward_curve

    points = curve(records)
    write_reward_curve(run_dir / PLOT_FILE, [p[0] for p in points], [p[1] for p in points])
