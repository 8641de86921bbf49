"""The verifier's commands as typed calls: ``rlfleet verify`` and ``rlfleet serve sandbox``.

``rlfleet/cli.py`` turns flags into the configs below; nothing here sees argparse. Expected
failures (no engine, a missing dependency, a port taken) are ``CommandError``s with one
clear sentence.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from prometheus_client import CollectorRegistry

from rlfleet import deps
from rlfleet.errors import CommandError
from rlfleet.grpc_server import ServerConfig, run_until_signalled
from rlfleet.sandbox.cgroups import CgroupError
from rlfleet.sandbox.engine import Engine, EngineConfig
from rlfleet.sandbox.mathcheck import AlgebraStartError
from rlfleet.sandbox.servicer import ServiceConfig, build_verifier_server


@dataclass(frozen=True, kw_only=True)
class VerifyConfig:
    cases: Path
    """JSONL file of cases."""
    server: str | None = None
    """Send the cases to a running verifier service (``VerifierClient`` targets) instead of
    starting an engine here."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """The engine started here when there is no ``server``."""
    concurrency: int | None = None
    """Cases running at once (None: 4 x the engine's workers); output keeps input order."""

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """``rlfleet serve sandbox``: the gRPC server, the service on it, the engine behind it."""

    server: ServerConfig = field(default_factory=ServerConfig)
    """Address, TLS, message size, drain time, metrics port."""
    service: ServiceConfig = field(default_factory=ServiceConfig)
    """Admission control and the registered-problem store."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Where and how cases run."""


async def start_engine(config: EngineConfig, registry: CollectorRegistry | None = None) -> Engine:
    """Start an engine, turning what a user can fix into a ``CommandError``."""
    try:
        deps.require()
        return await Engine.start(config, registry)
    except (deps.MissingDependency, AlgebraStartError) as e:
        raise CommandError(str(e)) from e
    except CgroupError as e:
        raise CommandError(f"the local backend cannot start: {e}") from e
    except PermissionError as e:
        raise CommandError(f"the local backend needs root (namespaces, cgroups): {e}") from e


async def verify(config: VerifyConfig, out: TextIO = sys.stdout) -> int:
    from rlfleet.sandbox.batch import CONCURRENCY_PER_WORKER, run_verify

    if not config.cases.is_file():
        raise CommandError(f"{config.cases}: no such file")
    concurrency = config.concurrency or CONCURRENCY_PER_WORKER * config.engine.workers
    if config.server:
        from rlfleet.sandbox.client import VerifierClient

        async with VerifierClient(config.server) as client:
            return await run_verify(client, config.cases, out, concurrency)
    engine = await start_engine(config.engine)
    try:
        return await run_verify(engine, config.cases, out, concurrency)
    finally:
        await engine.close()


async def serve(config: ServeConfig) -> int:
    """Serve until SIGTERM/SIGINT, then drain calls in flight and stop the engine."""
    for path in (config.server.tls_cert, config.server.tls_key):
        if path is not None and not path.is_file():
            raise CommandError(f"{path}: no such file")
    registry = CollectorRegistry()
    engine = await start_engine(config.engine, registry)
    try:
        srv, _ = build_verifier_server(config.server, config.service, engine, registry)
        await run_until_signalled(srv, config.server, registry, _announce)
    except (OSError, RuntimeError) as e:  # e.g. the port is taken
        host, port = config.server.host, config.server.port
        raise CommandError(f"cannot serve on {host}:{port}: {e}") from e
    finally:
        await engine.close()
    return 0


def _announce(line: str) -> None:
    print(f"rlfleet serve sandbox: {line}", file=sys.stderr, flush=True)
