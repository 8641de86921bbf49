"""A weight group's process group, for either side: the learner's rank 0 (which serves the
group's store) and an engine's ranks (which connect to it). Laid out as SGLang lays out its
side (``init_weights_update_group``): the members meet on rank 0's TCP store, the group's
keys sit under the prefix ``group_name``, and the group is created over that store under the
name ``group_name``, with torch's own helper, so that both sides derive the same keys.
docs/weight-push.md ("By broadcast").
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from rlfleet.rollout.records import WeightGroup, WeightManifest


def create_group(
    store: dist.Store,
    *,
    rank: int,
    world_size: int,
    name: str,
    backend: str,
    timeout: timedelta,
    device: torch.device | None = None,
) -> dist.ProcessGroup:
    """One member's side of a weight group over ``store`` (rank 0's store, reached by all).
    Returns once every member has joined (gloo; NCCL with ``device``, created eagerly)."""
    from torch.distributed.distributed_c10d import (
        Backend,
        GroupName,
        _new_process_group_helper,
        _world,
    )

    # (torch's own helper, as SGLang uses it: both sides then derive the same keys; it
    # prefixes the keys with the group's name once more inside.)
    group, _ = _new_process_group_helper(
        world_size,
        rank,
        [],
        Backend(backend),
        dist.PrefixStore(name, store),
        group_name=GroupName(name),
        timeout=timeout,
        device_id=device if backend == "nccl" else None,
    )
    # Group ranks are the global ranks of these members (as SGLang registers its side).
    _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def join_group(
    group: WeightGroup, timeout: timedelta, device: torch.device | None = None
) -> dist.ProcessGroup:
    """A one-rank engine's side: connect to rank 0's store and join as ``rank_offset``."""
    store = dist.TCPStore(
        group.master_address,
        group.master_port,
        group.world_size,
        is_master=False,
        timeout=timeout,
    )
    return create_group(
        store,
        rank=group.rank_offset,
        world_size=group.world_size,
        name=group.group_name,
        backend=group.backend,
        timeout=timeout,
        device=device,
    )


def receive_tensors(
    group: dist.ProcessGroup,
    manifest: WeightManifest,
    dtypes: dict[str, torch.dtype],
    device: torch.device,
    timeout: timedelta,
) -> dict[str, torch.Tensor]:
    """The manifest's tensors, each received by broadcast from rank 0 in manifest order
    (``dtypes``: the torch dtype of each manifest dtype name)."""
    out: dict[str, torch.Tensor] = {}
    for spec in manifest.tensors:
        tensor = torch.empty(spec.shape, dtype=dtypes[spec.dtype.value], device=device)
        group.broadcast(tensor, 0).wait(timeout)
        out[spec.name] = tensor
    return out
