"""Advantages and reward shaping for group-based policy optimisation (GRPO, Dr.GRPO, DAPO).

Rewards arrive as ``[N, G]``: N prompts (groups), G sampled completions each. Everything here is
a pure function of its arguments; which variant applies is decided once, in
``rlfleet.learner.algorithms``.

The std of a group is the population std (divide by G, not G - 1), as in the formula of
DeepSeekMath and DeepSeek-R1, ``std({r_1, ..., r_G})`` over the group itself: a group's
normalised advantages then have unit variance exactly, and a group of one is 0, never NaN.
(TRL and verl take the sample std; the two differ by sqrt(G / (G - 1)), a constant scale.)
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, *, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Each reward minus its group's mean, divided by (the group's std + eps) if ``scale_by_std``.

    GRPO and DAPO scale by the std; Dr.GRPO does not (it biases learning towards groups whose
    rewards barely differ). A group whose rewards are all equal gets advantages of exactly 0:
    its mean can differ from the rewards by a rounding error, which the division by a std of
    ~0 + eps would otherwise blow up into a signal that is not there.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards: expected [groups, samples], got shape {tuple(rewards.shape)}")
    if not rewards.is_floating_point():
        rewards = rewards.float()  # [N, G]
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # [N, G]
    if scale_by_std:
        std = rewards.std(dim=1, keepdim=True, correction=0)  # [N, 1]
        centred = centred / (std + eps)  # [N, G]
    tied = zero_variance_groups(rewards)  # [N]
    return torch.where(tied[:, None], torch.zeros_like(centred), centred)  # [N, G]


def token_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """A sequence's advantage on each of its completion tokens, 0 on padding."""
    # advantages: [B], mask: [B, T] bool
    per_token = advantages[:, None].expand(mask.shape)  # [B, T]
    return torch.where(mask, per_token, torch.zeros_like(per_token))  # [B, T]


def zero_variance_groups(rewards: Tensor, *, atol: float = 0.0) -> Tensor:
    """Which groups have all rewards equal (within ``atol``): no learning signal in them.

    DAPO's dynamic sampling drops these groups and samples more prompts until the batch is full.
    """
    # rewards: [N, G]
    spread = rewards.amax(dim=1) - rewards.amin(dim=1)  # [N]
    return spread <= atol  # [N] bool


def overlong_penalty(length: int, *, max_length: int, buffer: int) -> float:
    """DAPO's soft overlong punishment (eq. 13), added to the task reward.

    0 up to ``max_length - buffer`` tokens, then falling linearly to -1 at ``max_length``, and
    -1 beyond. ``buffer`` is DAPO's L_cache (4096 of L_max = 20480 in the paper); 0 turns the
    ramp into a step (-1 only past ``max_length``).
    """
    if length < 0:
        raise ValueError("length: must be >= 0")
    if not 0 <= buffer <= max_length:
        raise ValueError("buffer: must be in [0, max_length]")
    expected = max_length - buffer  # the length a completion should stay within
    if length <= expected:
        return 0.0
    if length <= max_length:
        return (expected - length) / buffer
    return -1.0
