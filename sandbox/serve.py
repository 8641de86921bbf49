"""`rlfleet serve sandbox`: the verifier service on its port, metrics on another."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from rlfleet.sandbox.service import SERVICE_NAME, Engine, ServiceConfig, VerifierService
from rlfleet.serving import ServerConfig, build_server, run_until_signalled
from rlfleet.v1 import verifier_pb2_grpc as pb_grpc


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_pending: int | None = None


def build(config: ServeConfig, engine: Engine, registry: CollectorRegistry):  # type: ignore[no-untyped-def]
    service = VerifierService(engine, registry, ServiceConfig(max_pending=config.max_pending))
    server_config = ServerConfig(
        host=config.host,
        port=config.port,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
        metrics_port=config.metrics_port,
    )
    srv = build_server(
        server_config, lambda s: pb_grpc.add_VerifierServicer_to_server(service, s), [SERVICE_NAME]
    )
    return srv, server_config, service


async def serve(config: ServeConfig, engine: Engine, registry: CollectorRegistry) -> None:
    srv, server_config, _ = build(config, engine, registry)

    def announce(line: str) -> None:
        print(f"rlfleet serve sandbox: {line}", file=sys.stderr, flush=True)

    await run_until_signalled(srv, server_config, registry, announce)
