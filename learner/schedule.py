"""Which prompts a step trains on and which seeds its samples use: pure functions of the
run's seed and the data position, so a resumed run takes exactly the batches the
uninterrupted one would.

The task list is read as an endless stream of epochs; epoch e is the list in an order drawn
from (seed, e). The data position counts the prompts taken so far.
"""

from __future__ import annotations

import hashlib
import random


def epoch_order(num_tasks: int, seed: int, epoch: int) -> list[int]:
    """Task indices of epoch ``epoch``, shuffled by (seed, epoch)."""
    order = list(range(num_tasks))
    random.Random(f"{seed}/{epoch}").shuffle(order)
    return order


def batch_indices(num_tasks: int, seed: int, position: int, count: int) -> list[int]:
    """The ``count`` task indices at data positions ``position`` ... ``position + count - 1``."""
    if num_tasks < 1:
        raise ValueError("num_tasks: no tasks")
    out: list[int] = []
    epoch, offset = divmod(position, num_tasks)
    order = epoch_order(num_tasks, seed, epoch)
    while len(out) < count:
        if offset == num_tasks:
            epoch, offset = epoch + 1, 0
            order = epoch_order(num_tasks, seed, epoch)
        out.append(order[offset])
        offset += 1
    return out


def sample_seed(seed: int, step: int, group: int) -> int:
    """The sampling seed of group ``group`` of step ``step`` (its sample i uses this + i);
    below 2**62, so seed + i fits every engine's seed type."""
    digest = hashlib.sha256(f"{seed}/{step}/{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 2
