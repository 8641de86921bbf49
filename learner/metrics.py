"""The learner's Prometheus metrics (``rlfleet_learner_*``), in one place so that ``rlfleet
train``, the deploy rules (deploy/prometheus/rlfleet-learner.rules.yml) and the dashboard
(deploy/grafana/rlfleet-learner.json) agree on names.

``LearnerMetrics.observe`` takes a finished step's record (``loop.StepRecord``) and reads
its fields by name: ``step``, ``staleness``, ``reward_mean``/``reward_min``/``reward_max``,
``accuracy_mean``, ``samples``, ``scored``, ``tokens``, ``tokens_per_s``, the ``time_*_s``
phase timings, ``push_bytes``, ``push_failures`` (rollout servers the step's push did not
reach), ``sample_staleness`` (one value per sample), ``lr``, ``grad_norm`` and the loss's
metrics in ``train`` (``loss``, ``mismatch_*``).

Versions are optimizer steps: after step ``s`` the learner holds (and has pushed) policy
version ``s + 1``. A value the step did not have (no sample scored: no reward) is NaN, so a
graph shows a gap rather than a stale number. Label values: ``phase_seconds`` by ``phase``
(``PHASES``), ``samples`` by ``scored`` ("true"/"false"), ``logprob_mismatch`` by ``stat``
(``MISMATCH_STATS``); every labelled series exists from the start (the counters' and
histograms' at zero, so that ``increase()`` sees the first event).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rlfleet.grpc_server import start_metrics

if TYPE_CHECKING:
    from rlfleet.learner.loop import StepRecord

PHASES = ("generate", "reward", "train", "push")
"""A step's phases, as the record's ``time_<phase>_s`` fields name them (``reward``: waiting
for the verifier fleet's scores)."""
MISMATCH_STATS = ("abs_mean", "abs_max", "ratio_mean")
"""The loss's ``mismatch_<stat>`` metrics (learner vs rollout engine log-probabilities)."""
STEP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
STALENESS_BUCKETS = (0, 1, 2, 3, 4, 8, 16, 32)

NAN = float("nan")


def _value(x: float | None) -> float:
    return NAN if x is None else float(x)


class LearnerMetrics:
    def __init__(self, registry: CollectorRegistry, *, max_staleness: int) -> None:
        self.steps = Counter(
            "rlfleet_learner_steps", "Optimizer steps completed", registry=registry
        )
        self.step_seconds = Histogram(
            "rlfleet_learner_step_seconds",
            "Wall time of a whole step (phases may overlap in the asynchronous pipeline)",
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.phase_seconds = Histogram(
            "rlfleet_learner_phase_seconds",
            "Wall time of each phase of a step: generate, reward (waiting for the verifier), "
            "train, push (the weight push to the rollout servers)",
            ["phase"],
            buckets=STEP_BUCKETS,
            registry=registry,
        )
        self.last_step = Gauge(
            "rlfleet_learner_last_step_timestamp_seconds",
            "When the last step completed (Unix time); the learner's start until one has",
            registry=registry,
        )
        self.version = Gauge(
            "rlfleet_learner_policy_version",
            "Policy version the learner holds (and has pushed): optimizer steps taken",
            registry=registry,
        )
        self.reward_mean = Gauge(
            "rlfleet_learner_reward_mean",
            "Mean total reward of the last step's scored samples (NaN: none scored)",
            registry=registry,
        )
        self.reward_min = Gauge(
            "rlfleet_learner_reward_min",
            "Lowest total reward of the last step's scored samples (NaN: none scored)",
            registry=registry,
        )
        self.reward_max = Gauge(
            "rlfleet_learner_reward_max",
            "Highest total reward of the last step's scored samples (NaN: none scored)",
            registry=registry,
        )
        self.accuracy = Gauge(
            "rlfleet_learner_accuracy_mean",
            "Mean accuracy reward (the verifier's) of the last step's scored samples",
            registry=registry,
        )
        self.samples = Counter(
            "rlfleet_learner_samples",
            "Samples trained on, by whether the verifier scored them",
            ["scored"],
            registry=registry,
        )
        self.tokens = Counter(
            "rlfleet_learner_tokens", "Completion tokens generated for training", registry=registry
        )
        self.tokens_per_s = Gauge(
            "rlfleet_learner_step_tokens_per_second",
            "Completion tokens per second of the last step's wall time",
            registry=registry,
        )
        self.staleness = Histogram(
            "rlfleet_learner_sample_staleness_versions",
            "Policy versions each sample lagged the learner by when trained on",
            buckets=STALENESS_BUCKETS,
            registry=registry,
        )
        self.staleness_last = Gauge(
            "rlfleet_learner_staleness_versions",
            "Staleness of the last step's oldest sample, in policy versions",
            registry=registry,
        )
        self.max_staleness = Gauge(
            "rlfleet_learner_max_staleness_versions",
            "The configured bound on staleness (rollout.max_staleness; 0: synchronous)",
            registry=registry,
        )
        self.push_bytes = Counter(
            "rlfleet_learner_weight_push_bytes",
            "Tensor bytes of weight pushes the rollout servers applied",
            registry=registry,
        )
        self.push_failures = Counter(
            "rlfleet_learner_weight_push_failures",
            "Weight pushes that did not reach a rollout server (one per server and step)",
            registry=registry,
        )
        self.mismatch = Gauge(
            "rlfleet_learner_logprob_mismatch",
            "Learner vs rollout engine log-probabilities of the last step's tokens: mean and "
            "max absolute difference, mean ratio",
            ["stat"],
            registry=registry,
        )
        self.loss = Gauge("rlfleet_learner_loss", "Loss of the last step", registry=registry)
        self.grad_norm = Gauge(
            "rlfleet_learner_grad_norm",
            "Gradient norm of the last step, before clipping (NaN: no step taken)",
            registry=registry,
        )
        self.lr = Gauge(
            "rlfleet_learner_learning_rate", "Learning rate of the last step", registry=registry
        )
        for phase in PHASES:
            self.phase_seconds.labels(phase=phase)
        for scored in ("true", "false"):
            self.samples.labels(scored=scored)
        for stat in MISMATCH_STATS:
            self.mismatch.labels(stat=stat).set(NAN)
        for gauge in (
            self.reward_mean,
            self.reward_min,
            self.reward_max,
            self.accuracy,
            self.loss,
            self.grad_norm,
        ):
            gauge.set(NAN)
        self.max_staleness.set(max_staleness)
        # The stall alert counts from here until the first step completes.
        self.last_step.set_to_current_time()

    def observe(self, record: StepRecord) -> None:
        """Account for one completed step."""
        self.steps.inc()
        self.version.set(record.step + 1)
        self.step_seconds.observe(record.time_step_s)
        for phase in PHASES:
            self.phase_seconds.labels(phase=phase).observe(getattr(record, f"time_{phase}_s"))
        self.reward_mean.set(_value(record.reward_mean))
        self.reward_min.set(_value(record.reward_min))
        self.reward_max.set(_value(record.reward_max))
        self.accuracy.set(_value(record.accuracy_mean))
        self.samples.labels(scored="true").inc(record.scored)
        self.samples.labels(scored="false").inc(record.samples - record.scored)
        self.tokens.inc(record.tokens)
        self.tokens_per_s.set(record.tokens_per_s)
        for lag in record.sample_staleness:
            self.staleness.observe(lag)
        self.staleness_last.set(record.staleness)
        self.push_bytes.inc(record.push_bytes)
        self.push_failures.inc(record.push_failures)
        for stat in MISMATCH_STATS:
            self.mismatch.labels(stat=stat).set(record.train.get(f"mismatch_{stat}", NAN))
        self.loss.set(record.train.get("loss", NAN))
        self.grad_norm.set(_value(record.grad_norm))
        self.lr.set(record.lr)
        self.last_step.set_to_current_time()


class Unobserved:
    """Stands in for ``LearnerMetrics`` where none are served (metrics off, or a rank other
    than 0 of a distributed run)."""

    def observe(self, record: StepRecord) -> None:
        pass


@asynccontextmanager
async def serve_metrics(
    port: int | None, host: str, *, max_staleness: int, serve: bool = True
) -> AsyncIterator[LearnerMetrics | Unobserved]:
    """The learner's metrics, served at ``http://host:port/metrics`` for the block's length
    (as ``rlfleet serve``'s servers serve theirs); port None or 0, or ``serve`` False: none
    are served and ``observe`` does nothing."""
    if not port or not serve:
        yield Unobserved()
        return
    registry = CollectorRegistry()
    metrics = LearnerMetrics(registry, max_staleness=max_staleness)
    http_server = start_metrics(port, host, registry)
    try:
        yield metrics
    finally:
        # (shutdown waits for the serving thread's poll loop to notice: off the event loop.)
        await asyncio.to_thread(http_server.shutdown)
        http_server.server_close()
