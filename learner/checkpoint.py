"""Checkpoints with torch.distributed.checkpoint: the sharded model and optimizer (each rank
writes its own shards), the trainer's state (step, data position, LR schedule) and every
rank's RNG states, so that a resumed run takes exactly the steps the uninterrupted one would.

Layout under the checkpoint root::

    step-00000012/            one checkpoint, complete (renamed into place once written)
        .metadata, *.distcp   model and optimizer (DCP)
        trainer.json          TrainerState and the LR scheduler's state
        rng-rank00000.pt      python, torch CPU and CUDA generator states, one file per rank
    .step-00000014.partial/   one being written (ignored, and replaced by the next save)

Only the newest ``keep_last`` checkpoints are kept.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.optim.lr_scheduler import LRScheduler

STEP_DIR = re.compile(r"step-(\d{8})")
TRAINER_FILE = "trainer.json"


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    keep_last: int = 3
    """Checkpoints kept under the root; older ones are deleted after each save."""

    def __post_init__(self) -> None:
        if self.keep_last < 1:
            raise ValueError("keep_last: must be >= 1")


@dataclass(frozen=True, kw_only=True)
class TrainerState:
    """What the train loop needs, beyond weights and optimizer, to continue exactly."""

    step: int
    """Optimizer steps taken."""
    data_position: int = 0
    """Where the data stream continues (its own unit: prompts, batches, records)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else the loop keeps (JSON values)."""


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.fullmatch(p.name)
        if m and p.is_dir() and (p / TRAINER_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def rng_state() -> dict[str, Any]:
    """This process's generators: python's, torch's CPU one, and each CUDA device's."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(
    root: Path,
    state: TrainerState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None = None,
    config: CheckpointConfig = CheckpointConfig(),
) -> Path:
    """Write checkpoint ``state.step`` under ``root`` and return its directory. Collective:
    every rank calls it. Written into a partial directory and renamed into place by rank 0
    once every rank's part is on disk: a crash mid-save leaves the previous ones intact."""
    final = checkpoint_dir(root, state.step)
    partial = root / f".{final.name}.partial"
    rank = _rank()
    if rank == 0:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=partial)
    torch.save(rng_state(), partial / f"rng-rank{rank:05d}.pt")
    _barrier()
    if rank == 0:
        trainer = {
            "step": state.step,
            "data_position": state.data_position,
            "extra": state.extra,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
        }
        (partial / TRAINER_FILE).write_text(json.dumps(trainer, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        for _, old in list_checkpoints(root)[: -config.keep_last]:
            shutil.rmtree(old)
    _barrier()
    return final


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None = None,
) -> TrainerState:
    """Restore model, optimizer, scheduler and this rank's RNG states from ``path`` (a
    directory ``save_checkpoint`` returned), in place; returns the trainer state.
    Collective. The model must be parallelized as it was when saved (same world size: the
    RNG files are per rank)."""
    trainer = json.loads((path / TRAINER_FILE).read_text())
    rng_file = path / f"rng-rank{_rank():05d}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file}: no RNG state for this rank (another world size?)")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    # (DCP loads in place: the dicts are filled with the stored shards.)
    dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    if scheduler is not None and trainer["scheduler"] is not None:
        scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(torch.load(rng_file, weights_only=True))
    return TrainerState(
        step=trainer["step"], data_position=trainer["data_position"], extra=trainer["extra"]
    )
