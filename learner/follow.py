"""Rank 0 leads, the other ranks follow: under torchrun only rank 0 talks to the fleet
(generation, scoring, the run dir); every collective it is about to enter (a train step, a
weight push's gather, a checkpoint) it first announces with an ``Order`` broadcast to the
others, which enter the same collective with the same arguments. The followers thus run
the leader's sequence of collectives exactly, whatever the pipeline ahead of it does.

With one process nothing is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from rlfleet.learner.checkpoint import TrainerState


@dataclass(frozen=True)
class TrainOrder:
    batch: list[tuple[Any, float]]
    """The step's (sample, advantage) pairs; each rank trains on its slice."""


@dataclass(frozen=True)
class PushOrder:
    version: int


@dataclass(frozen=True)
class CheckpointOrder:
    state: TrainerState


@dataclass(frozen=True)
class StopOrder:
    pass


Order = TrainOrder | PushOrder | CheckpointOrder | StopOrder


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def announce(order: Order) -> None:
    """On rank 0: tell the other ranks what comes next (elsewhere: nothing, they are the
    ones doing what they were told)."""
    if world_size() > 1 and rank() == 0:
        dist.broadcast_object_list([order], src=0)


def receive() -> Order:
    """On the other ranks: what rank 0 does next."""
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    order = box[0]
    if not isinstance(order, TrainOrder | PushOrder | CheckpointOrder | StopOrder):
        raise RuntimeError(f"rank {rank()}: rank 0 sent {type(order).__name__}, not an order")
    return order
