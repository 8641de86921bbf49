"""`rlfleet serve sandbox`: the verifier service on its port, metrics on another.

The CLI starts the engine (with the same registry, so its metrics are served too), then::

    await serve_sandbox(ServeConfig(host=..., port=..., metrics_port=...), engine, registry)

which returns after SIGTERM/SIGINT once calls in flight have finished (or ``grace_s`` ran
out); the caller then closes the engine.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from rlfleet.grpc_server import Server, ServerConfig, build_server, run_until_signalled
from rlfleet.sandbox.servicer import SERVICE_NAME, Engine, ServiceConfig, VerifierService
from rlfleet.v1 import verifier_pb2_grpc as pb_grpc


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    host: str = "127.0.0.1"
    """Address to bind the gRPC port and the metrics port; loopback unless told otherwise."""
    port: int = 50051
    """gRPC port; 0 picks a free one (announced on stderr as ``listening on HOST:PORT``)."""
    metrics_port: int | None = None
    """Prometheus /metrics over HTTP on this port; None: no metrics endpoint."""
    tls_cert: Path | None = None
    """PEM certificate chain; with ``tls_key`` the gRPC port speaks TLS only."""
    tls_key: Path | None = None
    """PEM private key for ``tls_cert``."""
    max_pending: int | None = None
    """Cases running or waiting at once before unary calls get RESOURCE_EXHAUSTED
    (None: 4 x workers + 1024)."""
    max_message_mb: int = 64
    """Largest request or response."""
    problem_store_mb: int = 512
    """Memory for registered problems (LRU)."""
    grace_s: float = 30.0
    """On SIGTERM, calls in flight get this long to finish."""

    def server_config(self) -> ServerConfig:
        return ServerConfig(
            host=self.host,
            port=self.port,
            max_message_mb=self.max_message_mb,
            tls_cert=self.tls_cert,
            tls_key=self.tls_key,
            grace_s=self.grace_s,
            metrics_port=self.metrics_port,
        )

    def service_config(self) -> ServiceConfig:
        return ServiceConfig(max_pending=self.max_pending, problem_store_mb=self.problem_store_mb)


def build_verifier_server(
    config: ServeConfig, engine: Engine, registry: CollectorRegistry
) -> tuple[Server, VerifierService]:
    """A bound, not yet started server (tests start it and read ``Server.port``)."""
    service = VerifierService(engine, registry, config.service_config())
    srv = build_server(
        config.server_config(),
        lambda s: pb_grpc.add_VerifierServicer_to_server(service, s),
        [SERVICE_NAME],
    )
    return srv, service


def build(
    config: ServeConfig, engine: Engine, registry: CollectorRegistry
) -> tuple[Server, ServerConfig, VerifierService]:
    """Older spelling of ``build_verifier_server`` (tests/test_grpc.py uses it)."""
    srv, service = build_verifier_server(config, engine, registry)
    return srv, config.server_config(), service


async def serve_sandbox(config: ServeConfig, engine: Engine, registry: CollectorRegistry) -> None:
    """Serve until SIGTERM/SIGINT, then drain gracefully; the engine stays the caller's."""
    srv, _ = build_verifier_server(config, engine, registry)

    def announce(line: str) -> None:
        print(f"rlfleet serve sandbox: {line}", file=sys.stderr, flush=True)

    await run_until_signalled(srv, config.server_config(), registry, announce)
