"""Fakes of the learner's records for tests."""

from __future__ import annotations

from typing import Any

from rlfleet.learner.loop import StepRecord


def step_record(**changes: Any) -> StepRecord:
    """A plausible step's record, with ``changes``."""
    fields: dict[str, Any] = dict(
        step=4,
        policy_version=4,
        staleness=0,
        staleness_mean=0.0,
        prompt_ids=["a", "b"],
        reward_mean=0.25,
        reward_min=0.0,
        reward_max=1.0,
        accuracy_mean=0.5,
        samples=8,
        scored=6,
        unique_pairs=5,
        cache_hits=1,
        verified=4,
        resent=0,
        servers=1,
        tokens=120,
        tokens_per_s=60.0,
        time_generate_s=0.5,
        time_reward_s=0.75,
        time_wait_s=1.25,
        time_train_s=0.5,
        time_push_s=0.25,
        time_step_s=2.0,
        wall_s=10.0,
        lr=1e-3,
        grad_norm=0.5,
        train={"loss": -0.125, "mismatch_abs_mean": 0.01, "mismatch_abs_max": 0.5},
        push_bytes=4096,
        sample_staleness=[0] * 8,
    )
    fields.update(changes)
    return StepRecord(**fields)
