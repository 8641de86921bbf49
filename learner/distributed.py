"""Process group and device mesh for the learner: under torchrun (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` in the environment) or as one plain process.

gloo on CPU, NCCL on CUDA. The mesh is one-dimensional (every rank shards the model over
``DP_SHARD``). A single process without torchrun still gets a process group (world size 1,
an in-memory store, no port), so the sharded code path is the same everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

DP_SHARD = "dp_shard"
"""The mesh's one axis: ranks that each hold a shard of every parameter (FSDP)."""


@dataclass(frozen=True, kw_only=True)
class DistConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model lives: ``auto`` takes CUDA when there is one (NCCL), else CPU (gloo)."""
    timeout_s: float = 600.0
    """How long a collective may wait for the other ranks before the group gives up."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError("timeout_s: must be > 0")


@dataclass(frozen=True, kw_only=True)
class DistContext:
    """This process's place in the group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: DeviceMesh

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes shared files and talks to the rollout servers."""
        return self.rank == 0


def _device_type(config: DistConfig) -> Literal["cpu", "cuda"]:
    if config.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda asked for, but torch sees no CUDA device")
    return config.device


def init_distributed(config: DistConfig = DistConfig()) -> DistContext:
    """Join the process group (torchrun's, or a group of one) and build the mesh."""
    device_type = _device_type(config)
    backend = "nccl" if device_type == "cuda" else "gloo"
    timeout = timedelta(seconds=config.timeout_s)
    if "RANK" in os.environ:
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=timeout)
    else:
        rank, world_size, local_rank = 0, 1, 0
        if device_type == "cuda":
            torch.cuda.set_device(0)
        dist.init_process_group(
            backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout
        )
    device = torch.device(device_type, local_rank) if device_type == "cuda" else torch.device("cpu")
    mesh = init_device_mesh(device_type, (world_size,), mesh_dim_names=(DP_SHARD,))
    return DistContext(
        rank=rank, world_size=world_size, local_rank=local_rank, device=device, mesh=mesh
    )


def teardown() -> None:
    """Leave the group. The barrier first: without it some runs aborted inside
    ``destroy_process_group`` while another rank was still finishing a collective."""
    if not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()


@contextmanager
def distributed(config: DistConfig = DistConfig()) -> Iterator[DistContext]:
    """``init_distributed`` ... ``teardown``. On an error the barrier is skipped (the other
    ranks may never reach it): the group is destroyed directly."""
    ctx = init_distributed(config)
    try:
        yield ctx
    except BaseException:
        dist.destroy_process_group()
        raise
    teardown()
