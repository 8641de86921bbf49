"""Policy losses for GRPO, Dr.GRPO and DAPO as pure functions returning ``(loss, metrics)``.

All tensors are ``[B, T]`` over completion tokens (B sequences, T positions, ``mask`` True on
the tokens a sequence generated, False on padding) except advantages, ``[B]``. Padding never
reaches the loss or a metric, whatever values it holds (NaN included).

The three algorithms share one clipped surrogate (PPO's, with separate low and high clip
ranges) and differ in how per-token terms become one number, see ``aggregate``:

- GRPO (DeepSeekMath): mean over each sequence's tokens, then mean over sequences.
- Dr.GRPO: sum over each sequence's tokens divided by a constant (the max generation length),
  then mean over sequences: a long wrong answer is no longer penalised less per token.
- DAPO: mean over all tokens of the batch (each token weighs the same).

Log-probabilities, three of them per token:
- ``logprobs``: the policy being trained (carries the gradient);
- ``rollout_logprobs``: what the rollout engine reported while sampling;
- ``old_logprobs``: optional, the learner's own recomputation for the sampled tokens, before
  this update (no gradient). With it the PPO ratio is taken against the learner's numbers and
  the engine/learner mismatch can be corrected by truncated importance sampling (TIS:
  weight ``min(exp(old - rollout), C)``, as verl's TIS and the post "Your efficient RL framework
  secretly brings you off-policy RL training"); without it the ratio is taken against the
  engine's numbers directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Aggregation = Literal["seq_mean_token_mean", "seq_sum_norm", "token_mean"]
"""How per-token terms become the loss: GRPO's, Dr.GRPO's and DAPO's, in that order."""

KLEstimator = Literal["k1", "k3"]
"""Schulman's estimators of KL(policy || reference) from samples of the policy."""

# exp() of a log-ratio beyond this overflows float32 and turns 0 * inf into NaN. Ratios that
# far from 1 are clipped away by the surrogate anyway.
_MAX_LOG_RATIO = 20.0


@dataclass(frozen=True, kw_only=True)
class LossInputs:
    """One (micro-)batch of completions for the policy loss."""

    logprobs: Tensor
    """[B, T] log p(token) under the policy being trained; carries the gradient."""
    rollout_logprobs: Tensor
    """[B, T] log p(token) reported by the rollout engine that sampled it."""
    advantages: Tensor
    """[B] one advantage per sequence."""
    mask: Tensor
    """[B, T] bool: True on completion tokens, False on padding."""
    old_logprobs: Tensor | None = None
    """[B, T] the learner's log p(token) before this update (no grad); None: use the engine's."""
    ref_logprobs: Tensor | None = None
    """[B, T] log p(token) under the frozen reference; needed only when the KL term is on."""
    entropy: Tensor | None = None
    """[B, T] the policy's entropy per position (``token_entropy``); reported when given."""
    total_sequences: int | None = None
    """Sequences in the whole batch, when this is a slice of it (micro-batch, data-parallel
    rank): GRPO and Dr.GRPO divide by it instead of B, so slices' losses add up to the batch's."""
    total_tokens: int | None = None
    """Completion tokens in the whole batch, when this is a slice: DAPO divides by it."""

    def __post_init__(self) -> None:
        shape = self.logprobs.shape
        if self.logprobs.dim() != 2:
            raise ValueError(f"logprobs: expected [B, T], got shape {tuple(shape)}")
        if self.mask.dtype != torch.bool:
            raise ValueError("mask: must be a bool tensor")
        for name in ("rollout_logprobs", "mask", "old_logprobs", "ref_logprobs", "entropy"):
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise ValueError(f"{name}: shape {tuple(value.shape)} != logprobs {tuple(shape)}")
        if self.advantages.shape != shape[:1]:
            got = tuple(self.advantages.shape)
            raise ValueError(f"advantages: expected [{shape[0]}], got {got}")
        if not bool(self.mask.any()):
            raise ValueError("mask: selects no token")
        if self.total_sequences is not None and self.total_sequences < 1:
            raise ValueError("total_sequences: must be >= 1")
        if self.total_tokens is not None and self.total_tokens < 1:
            raise ValueError("total_tokens: must be >= 1")


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    *,
    how: Aggregation,
    norm_length: int | None = None,
    total_sequences: int | None = None,
    total_tokens: int | None = None,
) -> Tensor:
    """Reduce per-token terms to a scalar (padding must already be 0 in ``per_token``).

    ``norm_length`` is Dr.GRPO's constant divisor (the max generation length); the totals
    replace the local counts when this batch is a slice of a larger one.
    """
    # per_token: [B, T], mask: [B, T] bool
    sequences = total_sequences if total_sequences is not None else per_token.shape[0]
    if how == "seq_mean_token_mean":
        lengths = mask.sum(dim=1).clamp(min=1)  # [B]
        per_seq = per_token.sum(dim=1) / lengths  # [B]
        return per_seq.sum() / sequences  # []
    if how == "seq_sum_norm":
        if norm_length is None:
            raise ValueError("seq_sum_norm needs norm_length")
        return per_token.sum() / (sequences * norm_length)  # []
    if how == "token_mean":
        tokens = total_tokens if total_tokens is not None else int(mask.sum())
        return per_token.sum() / tokens  # []
    raise ValueError(f"unknown aggregation {how!r}")


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, *, estimator: KLEstimator) -> Tensor:
    """Per-token estimate of KL(policy || reference) on tokens sampled from the policy.

    k1 = log(p / p_ref), unbiased but of high variance and negative on some tokens;
    k3 = p_ref / p - log(p_ref / p) - 1, unbiased, always >= 0, lower variance (DeepSeekMath).
    """
    # logprobs, ref_logprobs: [B, T]
    log_ratio = logprobs - ref_logprobs  # [B, T] log(p / p_ref)
    if estimator == "k1":
        return log_ratio  # [B, T]
    if estimator == "k3":
        neg = (-log_ratio).clamp(max=_MAX_LOG_RATIO)  # [B, T] log(p_ref / p)
        return torch.exp(neg) - neg - 1.0  # [B, T]
    raise ValueError(f"unknown KL estimator {estimator!r}")


def policy_loss(
    inputs: LossInputs,
    *,
    clip_eps_low: float,
    clip_eps_high: float,
    aggregation: Aggregation,
    norm_length: int | None = None,
    kl_beta: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    tis_cap: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The clipped surrogate (+ beta * KL to the reference), aggregated as ``aggregation``.

    Per token: ``max(-A * r, -A * clip(r, 1 - eps_low, 1 + eps_high))`` with
    ``r = exp(logprobs - old)``, ``old`` being ``old_logprobs`` if given, else the engine's.
    With ``tis_cap`` = C the term is weighted by ``min(exp(old - rollout), C)`` (needs
    ``old_logprobs``). ``kl_beta == 0`` skips the reference entirely.
    """
    mask = inputs.mask  # [B, T] bool
    zeros = torch.zeros_like(inputs.logprobs)  # [B, T]
    logp = torch.where(mask, inputs.logprobs, zeros)  # [B, T]
    rollout = torch.where(mask, inputs.rollout_logprobs.detach(), zeros)  # [B, T]
    learner_old = inputs.old_logprobs
    old_source = inputs.rollout_logprobs if learner_old is None else learner_old  # [B, T]
    old = torch.where(mask, old_source.detach(), zeros)  # [B, T]
    adv = inputs.advantages.detach().to(logp.dtype)[:, None]  # [B, 1]
    counts = {
        "norm_length": norm_length,
        "total_sequences": inputs.total_sequences,
        "total_tokens": inputs.total_tokens,
    }

    log_ratio = (logp - old).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    clipped = ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)  # [B, T]
    per_token = torch.maximum(-adv * ratio, -adv * clipped)  # [B, T]

    tis_weight = None
    if tis_cap is not None:
        if learner_old is None:
            raise ValueError("truncated importance sampling needs old_logprobs (the learner's)")
        tis_weight = torch.exp(old - rollout).clamp(max=tis_cap)  # [B, T]
        per_token = per_token * tis_weight  # [B, T]
    per_token = torch.where(mask, per_token, zeros)  # [B, T]
    pg_loss = aggregate(per_token, mask, how=aggregation, **counts)  # []
    loss = pg_loss  # []

    kl = None
    if kl_beta > 0:
        if inputs.ref_logprobs is None:
            raise ValueError("kl_beta > 0 needs ref_logprobs")
        ref = torch.where(mask, inputs.ref_logprobs.detach(), zeros)  # [B, T]
        kl = torch.where(mask, kl_estimate(logp, ref, estimator=kl_estimator), zeros)  # [B, T]
        kl_loss = aggregate(kl, mask, how=aggregation, **counts)  # []
        loss = pg_loss + kl_beta * kl_loss  # []

    with torch.no_grad():
        metrics = {"loss": loss.item(), "pg_loss": pg_loss.item()}
        metrics.update(_ratio_metrics(ratio, log_ratio, adv, mask, clip_eps_low, clip_eps_high))
        learner = old if learner_old is not None else logp.detach()  # [B, T]
        metrics.update(_mismatch_metrics(learner, rollout, mask))
        if tis_weight is not None and tis_cap is not None:
            metrics["tis_weight_mean"] = _masked_mean(tis_weight, mask)
            metrics["tis_clip_frac"] = _masked_mean((old - rollout).exp() > tis_cap, mask)
        if kl is not None:
            metrics["kl"] = _masked_mean(kl, mask)
            metrics["kl_loss"] = kl_loss.item()
        if inputs.entropy is not None:
            metrics["entropy"] = _masked_mean(inputs.entropy, mask)
        metrics["tokens"] = float(mask.sum())
        metrics["sequences"] = float(mask.shape[0])
    return loss, metrics


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p(token) at each position, from logits that predict that position's token."""
    # logits: [B, T, V], tokens: [B, T]
    logp = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
    return logp.gather(-1, tokens[..., None]).squeeze(-1)  # [B, T]


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy of the policy's distribution at each position (for the metric, no gradient)."""
    # logits: [B, T, V]
    with torch.no_grad():
        logp = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
        return -(logp.exp() * logp).sum(dim=-1)  # [B, T]


def _masked_mean(values: Tensor, mask: Tensor) -> float:
    # values, mask: [B, T]
    return float(torch.where(mask, values.to(torch.float64), 0.0).sum() / mask.sum())


def _ratio_metrics(
    ratio: Tensor, log_ratio: Tensor, adv: Tensor, mask: Tensor, eps_low: float, eps_high: float
) -> dict[str, float]:
    """Clip fractions (tokens whose gradient the clip removed), ratio stats, approx KL."""
    # ratio, log_ratio: [B, T], adv: [B, 1], mask: [B, T] bool
    clipped_low = (adv < 0) & (ratio < 1.0 - eps_low)  # [B, T]
    clipped_high = (adv > 0) & (ratio > 1.0 + eps_high)  # [B, T]
    approx_kl = (ratio - 1.0) - log_ratio  # [B, T] k3 of KL(old || policy)
    return {
        "clip_frac_low": _masked_mean(clipped_low, mask),
        "clip_frac_high": _masked_mean(clipped_high, mask),
        "ratio_mean": _masked_mean(ratio, mask),
        "ratio_min": float(ratio[mask].min()),
        "ratio_max": float(ratio[mask].max()),
        "approx_kl": _masked_mean(approx_kl, mask),
    }


def _mismatch_metrics(learner: Tensor, rollout: Tensor, mask: Tensor) -> dict[str, float]:
    """How far the learner's log-probabilities are from the rollout engine's."""
    # learner, rollout: [B, T], mask: [B, T] bool
    diff = (learner - rollout)[mask]  # [N]
    return {
        "mismatch_abs_mean": float(diff.abs().mean()),
        "mismatch_abs_max": float(diff.abs().max()),
        "mismatch_ratio_mean": float(diff.exp().mean()),
    }
