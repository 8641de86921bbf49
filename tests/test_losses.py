"""Advantages and policy losses against values worked out by hand on tiny tensors.

Each test writes its arithmetic with plain floats so a reader can check it. Tensors are
float64 so the comparisons are tight.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from rlfleet.learner.advantages import (
    group_advantages,
    overlong_penalty,
    token_advantages,
    zero_variance_groups,
)
from rlfleet.learner.algorithms import (
    AlgorithmConfig,
    length_penalty,
    make_advantages,
    make_loss,
)
from rlfleet.learner.losses import LossInputs, kl_estimate, token_entropy, token_logprobs

F64 = torch.float64
GRPO = AlgorithmConfig(algorithm="grpo")
DR_GRPO = AlgorithmConfig(algorithm="dr_grpo", max_length=4)
DAPO = AlgorithmConfig(algorithm="dapo", overlong_buffer=0)


def t(values: list[float] | list[list[float]] | list[list[list[float]]]) -> Tensor:
    return torch.tensor(values, dtype=F64)


def leaf(values: list[list[float]]) -> Tensor:
    return torch.tensor(values, dtype=F64, requires_grad=True)


def mask_of(rows: list[list[int]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def grad_of(loss: Tensor, logprobs: Tensor) -> list[list[float]]:
    loss.backward()
    assert logprobs.grad is not None
    return logprobs.grad.tolist()


def approx(values: list[list[float]]) -> object:
    return [pytest.approx(row, abs=1e-12) for row in values]


# --- advantages ---------------------------------------------------------------------------


def test_grpo_advantages_use_the_groups_population_std() -> None:
    # rewards 1, 0, 0, 0: mean 0.25; population variance (0.75^2 + 3 * 0.25^2) / 4 = 0.1875
    std = math.sqrt(0.1875)
    expected = [centred / (std + 1e-6) for centred in (0.75, -0.25, -0.25, -0.25)]
    got = make_advantages(GRPO)(t([[1.0, 0.0, 0.0, 0.0]]))
    assert got.tolist() == [pytest.approx(expected, abs=1e-12)]
    # Unit population variance, as the normalisation promises (up to eps).
    assert float(got.var(correction=0)) == pytest.approx(1.0, abs=1e-5)


def test_advantages_eps_and_ties() -> None:
    # rewards 1, 1, 0, 0 with eps 0.1: mean 0.5, std 0.5, advantages +-0.5 / (0.5 + 0.1)
    got = group_advantages(t([[1.0, 1.0, 0.0, 0.0]]), eps=0.1)
    assert got.tolist() == [pytest.approx([0.5 / 0.6, 0.5 / 0.6, -0.5 / 0.6, -0.5 / 0.6])]
    # All-equal groups give exactly 0, even where the mean of 0.1 * 7 rounds off 0.1 (float32)
    # and the std is ~0: without the explicit zero that rounding / (0 + eps) is ~-0.0075.
    tied = torch.tensor([[0.1] * 7, [1.0] * 7], dtype=torch.float32)
    assert group_advantages(tied).tolist() == [[0.0] * 7, [0.0] * 7]
    assert group_advantages(tied, scale_by_std=False).tolist() == [[0.0] * 7, [0.0] * 7]
    # A group of one sample: 0, never NaN.
    assert group_advantages(t([[0.3]])).tolist() == [[0.0]]
    # Integer rewards are accepted.
    assert group_advantages(torch.tensor([[1, 0]]), eps=0.0).tolist() == [[1.0, -1.0]]


def test_dr_grpo_advantages_are_only_centred() -> None:
    # rewards 1, 0, 0, 0 and 3, 1: means 0.25 and 2, no division by the std
    got = make_advantages(DR_GRPO)(t([[1.0, 0.0, 0.0, 0.0], [3.0, 1.0, 2.0, 2.0]]))
    assert got.tolist() == [[0.75, -0.25, -0.25, -0.25], [1.0, -1.0, 0.0, 0.0]]


def test_token_advantages_broadcast_over_the_completion_mask() -> None:
    got = token_advantages(t([0.5, -2.0]), mask_of([[1, 1, 0], [1, 0, 0]]))
    assert got.tolist() == [[0.5, 0.5, 0.0], [-2.0, 0.0, 0.0]]


def test_zero_variance_groups() -> None:
    rewards = t([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.5, 0.5, 0.5]])
    assert zero_variance_groups(rewards).tolist() == [True, True, False, True]
    # Within a tolerance: 0.5 and 0.5001 count as equal at atol 1e-3, not at 0.
    close = t([[0.5, 0.5001]])
    assert zero_variance_groups(close).tolist() == [False]
    assert zero_variance_groups(close, atol=1e-3).tolist() == [True]


def test_overlong_penalty_piecewise() -> None:
    # max 20, buffer 5: free up to 15 tokens, then (15 - length) / 5, -1 beyond 20
    cases = {0: 0.0, 15: 0.0, 16: -0.2, 18: -0.6, 20: -1.0, 21: -1.0, 100: -1.0}
    for length, expected in cases.items():
        assert overlong_penalty(length, max_length=20, buffer=5) == pytest.approx(expected)
    # buffer 0: a step at max_length
    assert overlong_penalty(20, max_length=20, buffer=0) == 0.0
    assert overlong_penalty(21, max_length=20, buffer=0) == -1.0
    with pytest.raises(ValueError):
        overlong_penalty(5, max_length=20, buffer=21)


def test_length_penalty_follows_the_config() -> None:
    # DAPO's default buffer is max_length // 5 = 4 of 20: free up to 16, (16 - 17) / 4 at 17
    dapo = AlgorithmConfig(algorithm="dapo", max_length=20)
    assert dapo.resolved_overlong_buffer == 4
    assert length_penalty(dapo, 16) == 0.0
    assert length_penalty(dapo, 17) == pytest.approx(-0.25)
    assert length_penalty(AlgorithmConfig(algorithm="dapo", overlong_buffer=0), 10**6) == 0.0
    assert length_penalty(AlgorithmConfig(max_length=20), 25) == 0.0  # GRPO: off
    assert length_penalty(AlgorithmConfig(max_length=20, overlong_buffer=10), 15) == -0.5


# --- loss aggregation: GRPO vs Dr.GRPO vs DAPO --------------------------------------------

# Two sequences: the first 1 token long (+ 2 padding), the second 3 tokens long. The ratio is
# 1 everywhere (policy == old), so each token's term is -A: -1 for the first sequence (A = +1),
# +1 for each token of the second (A = -1).
LENGTH_MASK = [[1, 0, 0], [1, 1, 1]]
LENGTH_LOGP = [[-1.0, 0.0, 0.0], [-2.0, -0.5, -1.5]]
LENGTH_ADV = [1.0, -1.0]


def length_batch(logprobs: Tensor, **kwargs: object) -> LossInputs:
    return LossInputs(
        logprobs=logprobs,
        rollout_logprobs=t(LENGTH_LOGP),
        advantages=t(LENGTH_ADV),
        mask=mask_of(LENGTH_MASK),
        **kwargs,  # type: ignore[arg-type]
    )


def test_grpo_averages_each_sequence_then_the_batch() -> None:
    logp = leaf(LENGTH_LOGP)
    loss, metrics = make_loss(GRPO)(length_batch(logp))
    # sequence means: -1 / 1 = -1 and (1 + 1 + 1) / 3 = 1; over 2 sequences: 0
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert metrics["loss"] == pytest.approx(0.0, abs=1e-12)
    # d loss / d logp = -A * ratio / (length * B): -1 / (1 * 2) and +1 / (3 * 2)
    assert grad_of(loss, logp) == approx([[-1 / 2, 0.0, 0.0], [1 / 6, 1 / 6, 1 / 6]])


def test_dr_grpo_sums_tokens_over_a_constant() -> None:
    logp = leaf(LENGTH_LOGP)
    loss, _ = make_loss(DR_GRPO)(length_batch(logp))
    # (-1 + 3) / (B * max_length) = 2 / (2 * 4): the long wrong answer weighs 3x the short right
    assert loss.item() == pytest.approx(0.25)
    # every token weighs 1 / (2 * 4), whatever its sequence's length
    assert grad_of(loss, logp) == approx([[-1 / 8, 0.0, 0.0], [1 / 8, 1 / 8, 1 / 8]])


def test_dapo_averages_over_all_tokens_of_the_batch() -> None:
    logp = leaf(LENGTH_LOGP)
    loss, metrics = make_loss(DAPO)(length_batch(logp))
    # (-1 + 1 + 1 + 1) / 4 tokens
    assert loss.item() == pytest.approx(0.5)
    assert metrics["tokens"] == 4.0 and metrics["sequences"] == 2.0
    assert grad_of(loss, logp) == approx([[-1 / 4, 0.0, 0.0], [1 / 4, 1 / 4, 1 / 4]])


@pytest.mark.parametrize("config", [GRPO, DR_GRPO, DAPO], ids=["grpo", "dr_grpo", "dapo"])
def test_slices_with_batch_totals_add_up_to_the_batch(config: AlgorithmConfig) -> None:
    # Micro-batches or data-parallel ranks: each slice divides by the whole batch's counts.
    full, _ = make_loss(config)(length_batch(t(LENGTH_LOGP)))
    parts = 0.0
    for row in range(2):
        part, _ = make_loss(config)(
            LossInputs(
                logprobs=t(LENGTH_LOGP)[row : row + 1],
                rollout_logprobs=t(LENGTH_LOGP)[row : row + 1],
                advantages=t(LENGTH_ADV)[row : row + 1],
                mask=mask_of(LENGTH_MASK)[row : row + 1],
                total_sequences=2,
                total_tokens=4,
            )
        )
        parts += part.item()
    assert parts == pytest.approx(full.item())


def test_padding_is_ignored_whatever_it_holds() -> None:
    clean_logp = leaf(LENGTH_LOGP)
    clean, clean_metrics = make_loss(DAPO)(length_batch(clean_logp))
    nan = float("nan")
    dirty_logp = leaf([[-1.0, nan, 50.0], [-2.0, -0.5, -1.5]])
    dirty, dirty_metrics = make_loss(DAPO)(
        LossInputs(
            logprobs=dirty_logp,
            rollout_logprobs=t([[-1.0, 100.0, nan], [-2.0, -0.5, -1.5]]),
            old_logprobs=t([[-1.0, -100.0, nan], [-2.0, -0.5, -1.5]]),
            advantages=t(LENGTH_ADV),
            mask=mask_of(LENGTH_MASK),
        )
    )
    assert dirty.item() == clean.item()
    assert dirty_metrics == clean_metrics
    assert grad_of(dirty, dirty_logp) == grad_of(clean, clean_logp)


# --- clipping ---------------------------------------------------------------------------

# Four one-token sequences, old logprob -1, ratios r = 1.5, 0.5, 0.5, 1.5.
CLIP_RATIOS = [1.5, 0.5, 0.5, 1.5]
CLIP_ADV = [1.0, -1.0, 1.0, -1.0]


def one_token_batch(logprobs: Tensor, advantages: list[float]) -> LossInputs:
    old = [[-1.0]] * len(advantages)
    return LossInputs(
        logprobs=logprobs,
        rollout_logprobs=t(old),
        advantages=t(advantages),
        mask=torch.ones(len(advantages), 1, dtype=torch.bool),
    )


def test_grpo_clips_both_sides() -> None:
    logp = leaf([[-1.0 + math.log(r)] for r in CLIP_RATIOS])
    loss, metrics = make_loss(GRPO)(one_token_batch(logp, CLIP_ADV))
    # term = max(-A * r, -A * clip(r, 0.8, 1.2)):
    #   A=+1, r=1.5: max(-1.5, -1.2) = -1.2  clipped high, no gradient
    #   A=-1, r=0.5: max( 0.5,  0.8) =  0.8  clipped low, no gradient
    #   A=+1, r=0.5: max(-0.5, -0.8) = -0.5  unclipped, d/dlogp = -A * r / 4 = -0.125
    #   A=-1, r=1.5: max( 1.5,  1.2) =  1.5  unclipped, d/dlogp = -A * r / 4 = +0.375
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 0.5 + 1.5) / 4)
    assert grad_of(loss, logp) == approx([[0.0], [0.0], [-0.125], [0.375]])
    assert metrics["clip_frac_low"] == 0.25
    assert metrics["clip_frac_high"] == 0.25
    assert metrics["ratio_mean"] == pytest.approx(1.0)
    assert metrics["ratio_min"] == pytest.approx(0.5)
    assert metrics["ratio_max"] == pytest.approx(1.5)
    # approx KL, k3 of the ratio: mean of (r - 1) - ln r
    k3 = [(r - 1) - math.log(r) for r in CLIP_RATIOS]
    assert metrics["approx_kl"] == pytest.approx(sum(k3) / 4)


def test_dapo_clip_higher_is_asymmetric() -> None:
    ratios, adv = [1.25, 0.75], [1.0, -1.0]
    logp_values = [[-1.0 + math.log(r)] for r in ratios]
    # GRPO, eps 0.2 both sides: 1.25 > 1.2 and 0.75 < 0.8 are both clipped
    grpo_logp = leaf(logp_values)
    grpo, grpo_metrics = make_loss(GRPO)(one_token_batch(grpo_logp, adv))
    assert grpo.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert grad_of(grpo, grpo_logp) == approx([[0.0], [0.0]])
    assert (grpo_metrics["clip_frac_low"], grpo_metrics["clip_frac_high"]) == (0.5, 0.5)
    # DAPO, eps_low 0.2, eps_high 0.28: 1.25 < 1.28 keeps its gradient, 0.75 is still clipped
    assert DAPO.resolved_clip_eps_high == 0.28
    dapo_logp = leaf(logp_values)
    dapo, dapo_metrics = make_loss(DAPO)(one_token_batch(dapo_logp, adv))
    assert dapo.item() == pytest.approx((-1.25 + 0.8) / 2)
    assert grad_of(dapo, dapo_logp) == approx([[-1.25 / 2], [0.0]])
    assert (dapo_metrics["clip_frac_low"], dapo_metrics["clip_frac_high"]) == (0.5, 0.0)


# --- KL to the reference ----------------------------------------------------------------

# One sequence of two tokens: p = 0.5, 0.25; p_ref = 0.25, 0.25. A = 0 and ratio 1, so the
# policy term is 0 and the loss is beta * KL.
KL_LOGP = [[math.log(0.5), math.log(0.25)]]
KL_REF = [[math.log(0.25), math.log(0.25)]]


def kl_batch(logprobs: Tensor, ref: Tensor | None) -> LossInputs:
    return LossInputs(
        logprobs=logprobs,
        rollout_logprobs=t(KL_LOGP),
        advantages=t([0.0]),
        mask=mask_of([[1, 1]]),
        ref_logprobs=ref,
    )


def test_kl_k1_and_k3_values() -> None:
    # k1 = ln(p / p_ref): ln 2, 0
    k1 = kl_estimate(t(KL_LOGP), t(KL_REF), estimator="k1")
    assert k1.tolist() == [pytest.approx([math.log(2), 0.0])]
    # k3 = p_ref / p - ln(p_ref / p) - 1: 0.5 - ln 0.5 - 1 = ln 2 - 0.5, and 1 - 0 - 1 = 0
    k3 = kl_estimate(t(KL_LOGP), t(KL_REF), estimator="k3")
    assert k3.tolist() == [pytest.approx([math.log(2) - 0.5, 0.0])]


@pytest.mark.parametrize(
    ("estimator", "kl_mean", "grads"),
    [
        # k1: loss 0.1 * ln 2 / 2; d/dlogp k1 = 1, over 2 tokens: 0.1 / 2 each
        ("k1", math.log(2) / 2, [0.05, 0.05]),
        # k3: d/dlogp = 1 - p_ref / p: 1 - 0.5 and 1 - 1; times 0.1 / 2
        ("k3", (math.log(2) - 0.5) / 2, [0.1 * 0.5 / 2, 0.0]),
    ],
)
def test_kl_term_in_the_loss(estimator: str, kl_mean: float, grads: list[float]) -> None:
    config = AlgorithmConfig(kl_beta=0.1, kl_estimator=estimator)  # type: ignore[arg-type]
    logp = leaf(KL_LOGP)
    loss, metrics = make_loss(config)(kl_batch(logp, t(KL_REF)))
    assert loss.item() == pytest.approx(0.1 * kl_mean)
    assert metrics["kl"] == pytest.approx(kl_mean)
    assert metrics["pg_loss"] == 0.0
    assert grad_of(loss, logp) == approx([grads])


def test_beta_zero_skips_the_reference() -> None:
    without, metrics = make_loss(GRPO)(kl_batch(t(KL_LOGP), None))
    nan_ref = t([[float("nan"), float("nan")]])
    with_ref, _ = make_loss(GRPO)(kl_batch(t(KL_LOGP), nan_ref))
    assert without.item() == with_ref.item() == 0.0
    assert "kl" not in metrics
    with pytest.raises(ValueError, match="ref_logprobs"):
        make_loss(AlgorithmConfig(kl_beta=0.1))(kl_batch(t(KL_LOGP), None))


# --- engine/learner mismatch and truncated importance sampling ----------------------------

# One sequence of three tokens, A = +1. The learner's old logprobs equal the policy's (ratio
# 1); the engine's differ: old - rollout = ln 3, ln 0.5, 0, so exp(old - rollout) = 3, 0.5, 1.
TIS_OLD = [[-1.0, -2.0, -0.5]]
TIS_ROLLOUT = [[-1.0 - math.log(3), -2.0 - math.log(0.5), -0.5]]


def tis_batch(logprobs: Tensor, *, with_old: bool) -> LossInputs:
    return LossInputs(
        logprobs=logprobs,
        rollout_logprobs=t(TIS_ROLLOUT),
        old_logprobs=t(TIS_OLD) if with_old else None,
        advantages=t([1.0]),
        mask=mask_of([[1, 1, 1]]),
    )


def test_tis_truncates_the_engine_learner_weight() -> None:
    logp = leaf(TIS_OLD)
    loss, metrics = make_loss(AlgorithmConfig(tis_cap=2.0))(tis_batch(logp, with_old=True))
    # weights min(3, 2), min(0.5, 2), min(1, 2) = 2, 0.5, 1; terms -A * 1 * w; mean of 3
    assert loss.item() == pytest.approx(-(2 + 0.5 + 1) / 3)
    assert grad_of(loss, logp) == approx([[-2 / 3, -0.5 / 3, -1 / 3]])
    assert metrics["tis_weight_mean"] == pytest.approx(3.5 / 3)
    assert metrics["tis_clip_frac"] == pytest.approx(1 / 3)
    # mismatch: |old - rollout| = ln 3, ln 2, 0; exp(old - rollout) = 3, 0.5, 1
    assert metrics["mismatch_abs_mean"] == pytest.approx((math.log(3) + math.log(2)) / 3)
    assert metrics["mismatch_abs_max"] == pytest.approx(math.log(3))
    assert metrics["mismatch_ratio_mean"] == pytest.approx(1.5)


def test_without_tis_the_ratio_is_against_old_or_the_engine() -> None:
    # learner's old logprobs given, no TIS: ratio 1, each term -1, mean -1
    with_old, metrics = make_loss(GRPO)(tis_batch(t(TIS_OLD), with_old=True))
    assert with_old.item() == pytest.approx(-1.0)
    assert "tis_weight_mean" not in metrics
    # no old logprobs: ratio = exp(logp - rollout) = 3, 0.5, 1 with A = +1, eps 0.2:
    # max(-3, -1.2) = -1.2, max(-0.5, -0.8) = -0.5, -1; mean -2.7 / 3 = -0.9
    engine, metrics = make_loss(GRPO)(tis_batch(t(TIS_OLD), with_old=False))
    assert engine.item() == pytest.approx(-0.9)
    assert metrics["clip_frac_high"] == pytest.approx(1 / 3)
    # the mismatch is then the current policy's against the engine's: the same numbers here
    assert metrics["mismatch_ratio_mean"] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="old_logprobs"):
        make_loss(AlgorithmConfig(tis_cap=2.0))(tis_batch(t(TIS_OLD), with_old=False))


# --- helpers, inputs and config ------------------------------------------------------------


def test_token_logprobs_and_entropy() -> None:
    # logits 0, ln 3 -> p = 0.25, 0.75
    logits = t([[[0.0, math.log(3)], [0.0, 0.0]]])
    assert token_logprobs(logits, torch.tensor([[1, 0]])).tolist() == [
        pytest.approx([math.log(0.75), math.log(0.5)])
    ]
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert token_entropy(logits).tolist() == [pytest.approx([entropy, math.log(2)])]
    _, metrics = make_loss(GRPO)(
        LossInputs(
            logprobs=t([[-1.0, -1.0]]),
            rollout_logprobs=t([[-1.0, -1.0]]),
            advantages=t([1.0]),
            mask=mask_of([[1, 1]]),
            entropy=token_entropy(logits),
        )
    )
    assert metrics["entropy"] == pytest.approx((entropy + math.log(2)) / 2)


def test_loss_inputs_are_checked() -> None:
    good: dict[str, object] = {
        "logprobs": t([[-1.0, -1.0]]),
        "rollout_logprobs": t([[-1.0, -1.0]]),
        "advantages": t([1.0]),
        "mask": mask_of([[1, 0]]),
    }
    LossInputs(**good)  # type: ignore[arg-type]
    bad: list[dict[str, object]] = [
        {"mask": torch.tensor([[1, 0]])},  # not bool
        {"mask": mask_of([[0, 0]])},  # no token
        {"rollout_logprobs": t([[-1.0]])},
        {"advantages": t([1.0, 2.0])},
        {"old_logprobs": t([[-1.0, -1.0, -1.0]])},
        {"total_tokens": 0},
    ]
    for change in bad:
        with pytest.raises(ValueError):
            LossInputs(**{**good, **change})  # type: ignore[arg-type]


def test_config_resolves_defaults_and_rejects_nonsense() -> None:
    assert GRPO.resolved_clip_eps_high == 0.2
    assert AlgorithmConfig(clip_eps_low=0.1).resolved_clip_eps_high == 0.1
    wider = AlgorithmConfig(algorithm="dapo", clip_eps_high=0.3, overlong_buffer=0)
    assert wider.resolved_clip_eps_high == 0.3
    assert DAPO.resolved_dynamic_sampling and not GRPO.resolved_dynamic_sampling
    assert AlgorithmConfig(dynamic_sampling=True).resolved_dynamic_sampling
    assert GRPO.kl_beta == 0.0  # the reference is off by default
    bad: list[dict[str, object]] = [
        {"algorithm": "ppo"},
        {"algorithm": "dr_grpo"},  # no max_length
        {"algorithm": "dapo"},  # no max_length for the overlong penalty
        {"kl_estimator": "k2"},
        {"kl_beta": -0.1},
        {"clip_eps_low": 1.0},
        {"tis_cap": 0.0},
        {"std_eps": 0.0},
        {"overlong_buffer": 5},  # no max_length
        {"max_length": 4, "overlong_buffer": 5},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            AlgorithmConfig(**kwargs)  # type: ignore[arg-type]
