"""``rlfleet bench train``: the learner's step time with generation running one step ahead
(``max_staleness = 1``) against the synchronous loop (``max_staleness = 0``), measured in one
run on the same preset, seed and machine.

Each mode is a real ``rlfleet train`` (its embedded sandbox and rollout servers, the tiny
model from random init) of ``steps`` steps; the first ``warmup`` steps (server warm-up, the
verdict cache filling) are left out of the means. The preset gives generation and training
comparable work, as in RL on real models: 8 prompts x 8 samples of up to 32 tokens per step.
(The built-in default's one-token answers make verification, not generation, the long phase;
``KEY=VALUE`` overrides measure that, or any other setting, instead.)

Printed per mode: the mean step time and its phases (generate, reward wait, time the step
waited for its batch, train, push); then the speed-up of the asynchronous loop and its step
time over ``max(generate, train)``, which is 1 when the longer phase hides the other fully,
and over the longer of the two sides (a batch produced: generated and scored; a step
learned: trained and pushed). Where the engine, the sandbox and the learner share a few CPU
cores, the step cannot be shorter than all their CPU time over the cores, whatever overlaps:
each mode's CPU seconds per step, by component (read from ``/proc`` over the measured steps),
and that bound are printed too.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rlfleet.bench.proctree import cpu_by_part
from rlfleet.errors import CommandError

PRESET = (
    "rollout.prompts_per_step=8",
    "rollout.n=8",
    "rollout.max_new_tokens=32",
    "checkpoint_every=1000000",
)


@dataclass(frozen=True, kw_only=True)
class ModeFigures:
    staleness: int
    steps: int
    step_s: float
    generate_s: float
    reward_s: float
    wait_s: float
    train_s: float
    push_s: float
    staleness_max: int
    cpu: dict[str, float]
    """CPU seconds per measured step, by component."""
    cores: int

    @property
    def cpu_bound_s(self) -> float:
        """The shortest step the machine's cores allow for this CPU work."""
        return sum(self.cpu.values()) / self.cores

    def cpu_line(self) -> str:
        parts = ", ".join(f"{name} {self.cpu.get(name, 0.0):.3f}" for name in PARTS)
        return (
            f"{'':>16}  CPU s/step: {parts} = {sum(self.cpu.values()):.3f}; on {self.cores} "
            f"core{'s' if self.cores != 1 else ''} a step takes >= {self.cpu_bound_s:.3f} s "
            f"(this mode's is {self.step_s / self.cpu_bound_s:.2f}x that)"
        )

    def line(self) -> str:
        name = "synchronous" if self.staleness == 0 else f"max_staleness={self.staleness}"
        return (
            f"{name:>16}: {self.step_s:.3f} s/step over {self.steps} steps (generate "
            f"{self.generate_s:.3f}, reward wait {self.reward_s:.3f}, waited for the batch "
            f"{self.wait_s:.3f}, train {self.train_s:.3f}, push {self.push_s:.3f}; "
            f"staleness <= {self.staleness_max})"
        )


PARTS = ("learner", "rollout server", "sandbox server")


def _part(cmdline: str) -> str | None:
    for part in ("rollout", "sandbox"):
        if f" serve {part} " in cmdline:
            return f"{part} server"
    return None


def figures(
    metrics: Path, staleness: int, warmup: int, cpu: dict[str, float], cores: int
) -> ModeFigures:
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    kept = records[warmup:]
    if not kept:
        raise CommandError(f"{metrics}: no step after the {warmup} warm-up steps")

    def mean(key: str) -> float:
        return statistics.fmean(float(r[key]) for r in kept)

    return ModeFigures(
        staleness=staleness,
        steps=len(kept),
        step_s=mean("time_step_s"),
        generate_s=mean("time_generate_s"),
        reward_s=mean("time_reward_s"),
        wait_s=mean("time_wait_s"),
        train_s=mean("time_train_s"),
        push_s=mean("time_push_s"),
        staleness_max=max(int(r["staleness"]) for r in kept),
        cpu=cpu,
        cores=cores,
    )


async def run_mode(
    run_dir: Path, staleness: int, steps: int, warmup: int, overrides: Sequence[str]
) -> ModeFigures:
    args = [
        *(sys.executable, "-m", "rlfleet.cli", "train", "--run-dir", str(run_dir)),
        *("--steps", str(steps + warmup), "--seed", "0"),
        *PRESET,
        *overrides,
        f"rollout.max_staleness={staleness}",
        "log_every=1000000",
    ]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    errors = asyncio.ensure_future(proc.communicate())
    cpu = await _cpu_per_step(proc.pid, run_dir / "metrics.jsonl", warmup, steps + warmup, errors)
    _, err = await errors
    if proc.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or ["(nothing)"]
        raise CommandError(f"the max_staleness={staleness} run failed: {last[0]}")
    cores = len(os.sched_getaffinity(0))
    return figures(run_dir / "metrics.jsonl", staleness, warmup, cpu, cores)


async def _cpu_per_step(
    pid: int, metrics: Path, first: int, last: int, running: asyncio.Future[tuple[bytes, bytes]]
) -> dict[str, float]:
    """CPU seconds per step of the run's parts between its ``first`` and ``last`` records
    (snapshots taken as the records appear, while the run's processes are alive)."""

    def records() -> int:
        try:
            return metrics.read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    snapshots: list[tuple[int, dict[str, float]]] = []
    for target in (first, last):
        while (seen := records()) < target and not running.done():
            await asyncio.sleep(0.01)
        if seen < target:
            return {}  # (the run ended early: its error is reported instead)
        snapshots.append((seen, cpu_by_part(pid, _part)))
    (n0, a), (n1, b) = snapshots
    steps = max(1, n1 - n0)
    renamed = {"root": "learner"}
    return {renamed.get(k, k): (v - a.get(k, 0.0)) / steps for k, v in b.items()}


async def run_train_bench(steps: int, warmup: int, overrides: Sequence[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="rlfleet-bench-train-") as tmp:
        print(
            f"rlfleet bench train: {steps} steps per mode after {warmup} warm-up steps; "
            f"preset {' '.join(PRESET[:3])} {' '.join(overrides)}".rstrip(),
            file=sys.stderr,
        )
        sync = await run_mode(Path(tmp) / "sync", 0, steps, warmup, overrides)
        print(sync.line(), flush=True)
        print(sync.cpu_line(), flush=True)
        ahead = await run_mode(Path(tmp) / "async", 1, steps, warmup, overrides)
        print(ahead.line(), flush=True)
        print(ahead.cpu_line(), flush=True)
    longer = max(ahead.generate_s, ahead.train_s)
    produce, learn = ahead.generate_s + ahead.reward_s, ahead.train_s + ahead.push_s
    print(f"speed-up of max_staleness=1: {sync.step_s / ahead.step_s:.2f}x")
    print(
        f"its step time over max(generate, train): {ahead.step_s / longer:.2f} "
        f"(generate {ahead.generate_s:.3f}, train {ahead.train_s:.3f})"
    )
    print(
        f"its step time over max(generate + reward wait, train + push): "
        f"{ahead.step_s / max(produce, learn):.2f} ({produce:.3f}, {learn:.3f})"
    )
    print(
        f"its step time over the CPU bound: {ahead.step_s / ahead.cpu_bound_s:.2f} "
        f"({ahead.cpu_bound_s:.3f} s: {sum(ahead.cpu.values()):.3f} CPU s over {ahead.cores} "
        f"core{'s' if ahead.cores != 1 else ''})"
    )
    if ahead.cpu_bound_s > longer:
        print(
            f"(on these cores no step can be as short as max(generate, train): the CPU bound "
            f"is {ahead.cpu_bound_s / longer:.2f}x it, the sandbox server's share "
            f"{ahead.cpu.get('sandbox server', 0.0) / sum(ahead.cpu.values()):.0%} of the CPU)"
        )
    return 0
