"""The policy-optimisation algorithm, chosen by config: GRPO, Dr.GRPO or DAPO.

What each algorithm fixes (advantage scaling, loss aggregation, its defaults) is one row of
``RECIPES``; ``make_advantages`` and ``make_loss`` read it, so no other code switches on the
algorithm's name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

from torch import Tensor

from rlfleet.learner.advantages import group_advantages, overlong_penalty
from rlfleet.learner.losses import Aggregation, KLEstimator, LossInputs, policy_loss

Algorithm = Literal["grpo", "dr_grpo", "dapo"]

LossFn = Callable[[LossInputs], tuple[Tensor, dict[str, float]]]
"""``loss, metrics = loss_fn(inputs)``."""

AdvantageFn = Callable[[Tensor], Tensor]
"""``advantages [N, G] = advantage_fn(rewards [N, G])``."""


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """What an algorithm fixes, and its defaults for the knobs left unset."""

    scale_by_std: bool
    """Advantages divided by the group's std (GRPO, DAPO) or only centred (Dr.GRPO)."""
    aggregation: Aggregation
    """How per-token loss terms become the loss."""
    clip_eps_high: float | None
    """Default upper clip range; None: the same as the lower one."""
    dynamic_sampling: bool
    """Default for dropping groups whose rewards are all equal (and sampling more)."""
    overlong_buffer_fraction: float
    """Default soft overlong buffer, as a fraction of ``max_length``; 0: off."""


RECIPES: dict[Algorithm, Recipe] = {
    # DeepSeekMath / DeepSeek-R1.
    "grpo": Recipe(
        scale_by_std=True,
        aggregation="seq_mean_token_mean",
        clip_eps_high=None,
        dynamic_sampling=False,
        overlong_buffer_fraction=0.0,
    ),
    # "Understanding R1-Zero-Like Training": no std scaling, no per-sequence length division.
    "dr_grpo": Recipe(
        scale_by_std=False,
        aggregation="seq_sum_norm",
        clip_eps_high=None,
        dynamic_sampling=False,
        overlong_buffer_fraction=0.0,
    ),
    # DAPO: eps_high 0.28 and a 4096-token buffer of 20480 (0.2) are the paper's settings.
    "dapo": Recipe(
        scale_by_std=True,
        aggregation="token_mean",
        clip_eps_high=0.28,
        dynamic_sampling=True,
        overlong_buffer_fraction=0.2,
    ),
}


@dataclass(frozen=True, kw_only=True)
class AlgorithmConfig:
    """The algorithm and its knobs; unset knobs (None) take the algorithm's defaults."""

    algorithm: Algorithm = "grpo"
    """grpo, dr_grpo or dapo (see ``RECIPES``)."""
    clip_eps_low: float = 0.2
    """The ratio is clipped below at 1 - this."""
    clip_eps_high: float | None = None
    """The ratio is clipped above at 1 + this; None: 0.28 for DAPO (clip-higher), else as low."""
    std_eps: float = 1e-6
    """Added to a group's reward std before dividing by it (GRPO, DAPO)."""
    max_length: int | None = None
    """Max generation length in tokens (the rollout's max_new_tokens): Dr.GRPO's constant loss
    divisor and the overlong penalty's L_max. Needed by dr_grpo, and by the overlong penalty."""
    kl_beta: float = 0.0
    """Weight of the KL term to the frozen reference; 0 (default) skips the reference."""
    kl_estimator: KLEstimator = "k3"
    """k1 or k3 (Schulman's estimators)."""
    tis_cap: float | None = None
    """C of truncated importance sampling, weight min(exp(old - rollout), C); None: off.
    Needs the learner's own logprobs of the batch (``LossInputs.old_logprobs``)."""
    dynamic_sampling: bool | None = None
    """Drop groups whose rewards are all equal and sample more; None: on for DAPO only."""
    dynamic_sampling_rounds: int = 3
    """Rounds of extra prompts at most to refill the dropped groups of a step (a step
    that is still short trains on the groups it has)."""
    overlong_buffer: int | None = None
    """Soft overlong penalty ramp in tokens (DAPO's L_cache), 0: off; None: max_length // 5
    for DAPO (the paper's 4096 of 20480), 0 otherwise."""

    def __post_init__(self) -> None:
        if self.algorithm not in RECIPES:
            raise ValueError(f"algorithm: {self.algorithm!r} is not one of {sorted(RECIPES)}")
        if self.kl_estimator not in get_args(KLEstimator):
            raise ValueError(f"kl_estimator: {self.kl_estimator!r} is not k1 or k3")
        if not 0 <= self.clip_eps_low < 1:
            raise ValueError("clip_eps_low: must be in [0, 1)")
        if self.clip_eps_high is not None and self.clip_eps_high < 0:
            raise ValueError("clip_eps_high: must be >= 0")
        if self.std_eps <= 0:
            raise ValueError("std_eps: must be > 0")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError("max_length: must be >= 1")
        if self.kl_beta < 0:
            raise ValueError("kl_beta: must be >= 0")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ValueError("tis_cap: must be > 0")
        if self.dynamic_sampling_rounds < 0:
            raise ValueError("dynamic_sampling_rounds: must be >= 0")
        if self.overlong_buffer is not None and self.overlong_buffer < 0:
            raise ValueError("overlong_buffer: must be >= 0")
        if self.recipe.aggregation == "seq_sum_norm" and self.max_length is None:
            raise ValueError(f"{self.algorithm} needs max_length (its constant loss divisor)")
        if self.overlong_buffer and self.max_length is None:
            raise ValueError("overlong_buffer needs max_length")
        default_overlong = self.recipe.overlong_buffer_fraction > 0
        if default_overlong and self.overlong_buffer is None and self.max_length is None:
            raise ValueError(
                f"{self.algorithm} needs max_length for its overlong penalty (or overlong_buffer=0)"
            )
        if self.max_length is not None and self.resolved_overlong_buffer > self.max_length:
            raise ValueError("overlong_buffer: must be <= max_length")

    @property
    def recipe(self) -> Recipe:
        return RECIPES[self.algorithm]

    @property
    def resolved_clip_eps_high(self) -> float:
        if self.clip_eps_high is not None:
            return self.clip_eps_high
        default = self.recipe.clip_eps_high
        return self.clip_eps_low if default is None else default

    @property
    def resolved_dynamic_sampling(self) -> bool:
        if self.dynamic_sampling is not None:
            return self.dynamic_sampling
        return self.recipe.dynamic_sampling

    @property
    def resolved_overlong_buffer(self) -> int:
        if self.overlong_buffer is not None:
            return self.overlong_buffer
        if self.max_length is None:
            return 0
        return int(self.max_length * self.recipe.overlong_buffer_fraction)


def make_loss(config: AlgorithmConfig) -> LossFn:
    """The configured algorithm's policy loss: ``loss, metrics = make_loss(config)(inputs)``."""
    return functools.partial(
        policy_loss,
        clip_eps_low=config.clip_eps_low,
        clip_eps_high=config.resolved_clip_eps_high,
        aggregation=config.recipe.aggregation,
        norm_length=config.max_length,
        kl_beta=config.kl_beta,
        kl_estimator=config.kl_estimator,
        tis_cap=config.tis_cap,
    )


def make_advantages(config: AlgorithmConfig) -> AdvantageFn:
    """The configured algorithm's advantages from group rewards ``[N, G]``."""
    return functools.partial(
        group_advantages, scale_by_std=config.recipe.scale_by_std, eps=config.std_eps
    )


def length_penalty(config: AlgorithmConfig, length: int) -> float:
    """The overlong penalty of a completion of ``length`` tokens (0.0 when it is off)."""
    buffer = config.resolved_overlong_buffer
    if buffer == 0 or config.max_length is None:
        return 0.0
    return overlong_penalty(length, max_length=config.max_length, buffer=buffer)
