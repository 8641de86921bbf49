"""The rollout service's Prometheus metrics (``rlfleet_rollout_*``), in one place so that the
servicer, the engines and the deploy rules (deploy/prometheus/rlfleet-rollout.rules.yml)
agree on names.

Label values: ``completions`` by ``finish_reason`` (a ``FinishReason``) and ``scored``
("true"/"false"; "false" also when the prompt asked for no score: the verifier's failures are
``verifier_errors``); ``update_seconds`` by ``stage`` ("receive": the stream from the first
chunk to the verified checksum; "apply": generation paused, weights loaded);
``updates`` by ``result`` ("applied", "rejected": a bad stream, "failed": the engine could not
load it). Every labelled counter and histogram starts at zero for each value, so that
``increase()`` sees its first event (a series born at 1 shows no increase)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rlfleet.rollout.records import FinishReason

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60)
UPDATE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.tokens = Counter(
            "rlfleet_rollout_tokens_generated", "Tokens generated", registry=registry
        )
        self.completions = Counter(
            "rlfleet_rollout_completions",
            "Completions returned, by finish reason and whether they were scored",
            ["finish_reason", "scored"],
            registry=registry,
        )
        self.running = Gauge(
            "rlfleet_rollout_sequences_running", "Sequences being decoded", registry=registry
        )
        self.queued = Gauge(
            "rlfleet_rollout_sequences_queued", "Sequences waiting for a slot", registry=registry
        )
        self.requests = Gauge(
            "rlfleet_rollout_requests_in_flight", "Generate calls in progress", registry=registry
        )
        self.first_token = Histogram(
            "rlfleet_rollout_time_to_first_token_seconds",
            "From a sequence's arrival to its first token",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.version = Gauge(
            "rlfleet_rollout_policy_version", "Policy version now serving", registry=registry
        )
        self.update_seconds = Histogram(
            "rlfleet_rollout_weight_update_seconds",
            "Weight updates: receiving and applying, by stage",
            ["stage"],
            buckets=UPDATE_BUCKETS,
            registry=registry,
        )
        self.update_bytes = Counter(
            "rlfleet_rollout_weight_update_bytes",
            "Bytes of applied weight updates",
            registry=registry,
        )
        self.updates = Counter(
            "rlfleet_rollout_weight_updates",
            "Weight updates by result (applied, rejected, failed)",
            ["result"],
            registry=registry,
        )
        self.update_started = Gauge(
            "rlfleet_rollout_weight_update_started_timestamp_seconds",
            "When the weight update in progress began (Unix time); 0 when none is: a hung "
            "update shows no duration until it ends",
            registry=registry,
        )
        self.verifier_seconds = Histogram(
            "rlfleet_rollout_verifier_seconds",
            "Verifier round trip of one completion",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.verifier_errors = Counter(
            "rlfleet_rollout_verifier_errors",
            "Completions the verifier could not score (they are returned unscored)",
            registry=registry,
        )
        for reason in FinishReason:
            for scored in ("true", "false"):
                self.completions.labels(finish_reason=reason.value, scored=scored)
        for stage in ("receive", "apply"):
            self.update_seconds.labels(stage=stage)
        for result in ("applied", "rejected", "failed"):
            self.updates.labels(result=result)
