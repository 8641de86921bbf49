"""The rollout service's Prometheus metrics (``rlfleet_rollout_*``), in one place so that the
servicer, the engines and the deploy rules (deploy/prometheus/rlfleet-rollout.rules.yml)
agree on names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
