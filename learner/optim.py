"""AdamW, its learning-rate schedule (linear warmup, then constant or cosine) and gradient
clipping; all of them work on FSDP2's sharded (DTensor) parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.optim.lr_scheduler import LambdaLR


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate (reached at the end of warmup)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's moment decay rates."""
    eps: float = 1e-8
    """AdamW's denominator floor."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    warmup_steps: int = 0
    """Steps over which the rate rises linearly from lr/warmup_steps to lr."""
    schedule: Literal["constant", "cosine"] = "constant"
    """After warmup: stay at lr, or follow a cosine down to min_lr_ratio * lr at total_steps."""
    total_steps: int | None = None
    """The run's length in optimizer steps (the cosine's end; needed for cosine)."""
    min_lr_ratio: float = 0.0
    """Where the cosine ends, as a fraction of lr."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; None: no clipping (the norm is still measured)."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError("lr: must be > 0")
        if self.warmup_steps < 0:
            raise ValueError("warmup_steps: must be >= 0")
        if self.schedule == "cosine" and (
            self.total_steps is None or self.total_steps <= self.warmup_steps
        ):
            raise ValueError("total_steps: the cosine schedule needs total_steps > warmup_steps")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("min_lr_ratio: must be within [0, 1]")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError("max_grad_norm: must be > 0 (or None)")


def lr_factor(step: int, config: OptimConfig) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a fraction of ``lr``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    assert config.total_steps is not None  # (checked in __post_init__)
    progress = min(1.0, (step - config.warmup_steps) / (config.total_steps - config.warmup_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig) -> LambdaLR:
    """Call ``step()`` after each ``optimizer.step()``."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, config))


def clip_gradients(model: nn.Module, max_norm: float | None) -> float:
    """Clip the gradients' global L2 norm to ``max_norm`` (None: leave them) and return the
    norm before clipping, the same on every rank."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if isinstance(norm, DTensor):
        # Each rank holds the norm of its shards: the reduction makes it the global one.
        norm = norm.full_tensor()
    if max_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return float(norm)
