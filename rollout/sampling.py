"""Sampling and scoring of the next token, batched with per-row parameters (pure functions).

Logprobs are those the learner computes: ``log_softmax(logits / T)`` of the full
distribution for T > 0 and ``log_softmax(logits)`` for greedy (T = 0); top-p and top-k
only restrict which token is drawn, they never renormalise the returned logprob.

Draws use one uniform number per row and step, taken from the sequence's own seeded
generator (``uniforms_for_seed``), so a sequence's tokens do not depend on what else is in
the batch: inverse-CDF sampling over the row's own (filtered) distribution.
"""

from __future__ import annotations

import torch
from torch import Tensor


def logits_to_logprobs(logits: Tensor, temperature: Tensor) -> Tensor:
    """Scaled log-distribution per row, in float32.

    logits: [n, V]; temperature: [n] (0: greedy, scored on the unscaled logits)
    returns: [n, V]
    """
    scale = torch.where(temperature > 0, temperature, torch.ones_like(temperature))  # [n]
    return scaled_logprobs(logits, scale)


def scaled_logprobs(logits: Tensor, scale: Tensor | None) -> Tensor:
    """``log_softmax(logits / scale)`` in float32; scale None: all rows at 1 (x / 1 == x,
    so skipping the division changes no number).

    logits: [n, V]; scale: [n] > 0
    returns: [n, V]
    """
    if scale is None:
        return torch.log_softmax(logits.float(), dim=-1)
    return torch.log_softmax(logits.float() / scale[:, None], dim=-1)  # [n, V]


def top_k_top_p_mask(probs: Tensor, top_k: Tensor, top_p: Tensor) -> Tensor:
    """Which tokens each row may draw, in vocabulary order.

    probs: [n, V]; top_k: [n] (0: off); top_p: [n] in (0, 1]
    returns: [n, V] bool
    """
    sorted_p, order = probs.sort(dim=-1, descending=True)  # [n, V]
    rank = torch.arange(probs.shape[-1], device=probs.device)  # [V]
    keep = (top_k[:, None] == 0) | (rank[None, :] < top_k[:, None])  # [n, V]
    # Nucleus: keep a token while the mass before it is under top_p (the top one always).
    mass_before = sorted_p.cumsum(dim=-1) - sorted_p  # [n, V]
    keep &= mass_before < top_p[:, None]
    return torch.zeros_like(keep).scatter_(-1, order, keep)  # back to vocabulary order


def inverse_cdf(weights: Tensor, uniform: Tensor) -> Tensor:
    """Index drawn from each row's (unnormalised) weights with its uniform number.

    weights: [n, V] >= 0; uniform: [n] in [0, 1)
    returns: [n] long; never an index of weight 0
    """
    cdf = weights.cumsum(dim=-1)  # [n, V]
    target = uniform[:, None] * cdf[:, -1:]  # [n, 1]
    index = torch.searchsorted(cdf, target, right=True)  # [n, 1]: first cdf > target
    return index.clamp_(max=weights.shape[-1] - 1)[:, 0]


def sample(
    logprobs: Tensor,
    greedy: Tensor | bool,
    top_k: Tensor,
    top_p: Tensor,
    uniform: Tensor,
    *,
    filtered: bool,
) -> Tensor:
    """Next token per row: the argmax for greedy rows (temperature 0), else a draw.

    logprobs: [n, V] (from ``logits_to_logprobs``); greedy: [n] bool, or one bool for
    every row (known on the host: only the work some row needs is done); top_p,
    uniform: [n]; top_k: [n] long; filtered: whether any row has top_k > 0 or top_p < 1
    (known on the host, so the sort is skipped when no row needs it)
    returns: [n] long
    """
    if greedy is True:
        return logprobs.argmax(dim=-1)  # [n]
    probs = logprobs.exp()  # [n, V]
    if filtered:
        # Masked in vocabulary order, so that an unfiltered row draws exactly what it
        # draws when no row is filtered (its result must not depend on its neighbours).
        probs = probs * top_k_top_p_mask(probs, top_k, top_p)  # [n, V]
    drawn = inverse_cdf(probs, uniform)  # [n]
    if greedy is False:
        return drawn
    return torch.where(greedy, logprobs.argmax(dim=-1), drawn)


def token_logprobs(logprobs: Tensor, tokens: Tensor) -> Tensor:
    """logprobs: [n, V]; tokens: [n] -> [n]"""
    return logprobs.gather(-1, tokens[:, None])[:, 0]


def uniforms_for_seed(seed: int, count: int) -> Tensor:
    """The uniform numbers a sequence with this seed draws its tokens with, one per step.

    returns: [count] float32 on the CPU (the same numbers whatever the device)
    """
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed % (1 << 64))  # (any int: the service may send negatives)
    return torch.rand(count, generator=generator)
