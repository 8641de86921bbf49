"""The verifier's commands as typed calls: ``rlfleet verify`` and ``rlfleet serve sandbox``.

``rlfleet/cli.py`` turns flags into the configs below; nothing here sees argparse. Expected
failures are ``CommandError``s with one clear sentence: ``UsageError`` (exit 2) for what the
user asked wrongly (a file that cannot be read, a cgroup parent that does not exist, TLS
files that do not load), plain ``CommandError`` (exit 1) for what the machine lacks (no
engine, a missing dependency, a port taken, no server answering). See docs/cli.md.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from prometheus_client import CollectorRegistry

from rlfleet import deps
from rlfleet.errors import CommandError, UsageError
from rlfleet.grpc_server import ServerConfig, run_until_signalled
from rlfleet.sandbox.cgroups import CgroupError, CgroupParentError
from rlfleet.sandbox.engine import Engine, EngineConfig
from rlfleet.sandbox.fusion import HttpConfig
from rlfleet.sandbox.mathcheck import AlgebraStartError
from rlfleet.sandbox.servicer import ServiceConfig, build_verifier_server
from rlfleet.sandbox.worker_handle import BackendUnavailable

STDIN = Path("-")
"""The input path that means standard input."""


@dataclass(frozen=True, kw_only=True)
class VerifyConfig:
    cases: Path
    """JSONL file of cases; ``STDIN`` (``-``) reads standard input."""
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
    http: HttpConfig | None = None
    """Also answer SandboxFusion's ``POST /run_code`` over HTTP (same host, TLS and pool);
    None: gRPC only."""


async def start_engine(config: EngineConfig, registry: CollectorRegistry | None = None) -> Engine:
    """Start an engine, turning what a user can fix into a ``CommandError``."""
    try:
        deps.require()
        return await Engine.start(config, registry)
    except (deps.MissingDependency, AlgebraStartError, BackendUnavailable) as e:
        raise CommandError(str(e)) from e
    except CgroupParentError as e:
        raise UsageError(f"--cgroup-parent: {e}") from e
    except CgroupError as e:
        raise CommandError(f"the local backend cannot start: {e}") from e
    except PermissionError as e:
        raise CommandError(f"the local backend needs root (namespaces, cgroups): {e}") from e


@contextlib.contextmanager
def open_input(path: Path) -> Iterator[BinaryIO]:
    """``path`` opened for reading (``-``: standard input, left open); a path that cannot be
    read is a ``UsageError`` naming it. FIFOs such as ``/dev/stdin`` are files too."""
    if path == STDIN:
        yield sys.stdin.buffer
        return
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, not a file") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read it ({e.strerror})") from e
    with stream:
        yield stream


async def verify(config: VerifyConfig, out: TextIO = sys.stdout) -> int:
    """Verify ``config.cases``; 0, or 2 when a line was invalid (see ``batch.run_verify``).

    A server that cannot be reached ends the run with ``CommandError`` (exit 1), after the
    results printed before it.
    """
    from rlfleet.sandbox.batch import CONCURRENCY_PER_WORKER, run_verify

    concurrency = config.concurrency or CONCURRENCY_PER_WORKER * config.engine.workers
    with open_input(config.cases) as cases:
        if config.server:
            from rlfleet.sandbox.client import VerifierClient, VerifierUnavailable

            try:
                client = VerifierClient(config.server)
            except ValueError as e:
                raise UsageError(f"--server: {e}") from e
            try:
                async with client:
                    return await run_verify(client, cases, out, concurrency)
            except VerifierUnavailable as e:
                raise CommandError(
                    f"{e}; start one with `rlfleet serve sandbox`, or check --server"
                ) from e
        engine = await start_engine(config.engine)
        try:
            return await run_verify(engine, cases, out, concurrency)
        finally:
            await engine.close()


def _check_port_free(host: str, port: int, what: str) -> None:
    """Fail fast, before any worker starts, when ``host:port`` cannot be bound (gRPC would
    say so only on its own log)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: {e.strerror}") from e
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
            try:
                probe.bind(address)
            except OSError as e:
                raise CommandError(
                    f"cannot listen on {host}:{port} ({e.strerror}): is another server on it? "
                    f"Pick another {what}"
                ) from e


def _check_tls(cert: Path | None, key: Path | None) -> None:
    if cert is None or key is None:
        return  # (ServerConfig refuses one without the other)
    for path in (cert, key):
        with open_input(path):
            pass
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        # (A password callback: OpenSSL must never prompt on the terminal for one.)
        context.load_cert_chain(cert, key, password=lambda: "")
    except ssl.SSLError as e:
        raise UsageError(
            f"--tls-cert {cert}, --tls-key {key}: not a PEM certificate and its key ({e})"
        ) from e


async def serve(config: ServeConfig) -> int:
    """Serve until SIGTERM/SIGINT, then drain calls in flight and stop the engine."""
    server = config.server
    _check_tls(server.tls_cert, server.tls_key)
    _check_port_free(server.host, server.port, "--port")
    if server.metrics_port is not None:
        _check_port_free(server.host, server.metrics_port, "--metrics-port")
    if config.http is not None:
        _check_port_free(server.host, config.http.port, "--http-port")
    registry = CollectorRegistry()
    engine = await start_engine(config.engine, registry)
    try:
        try:
            srv, service = build_verifier_server(server, config.service, engine, registry)
        except (OSError, RuntimeError) as e:  # taken since the check above
            raise CommandError(f"cannot listen on {server.host}:{server.port}: {e}") from e
        doors = []
        if config.http is not None:
            from rlfleet.sandbox.http_door import HttpDoor  # (aiohttp: only when asked for)

            doors.append(HttpDoor(config.http, server, service, engine))
        try:
            await run_until_signalled(srv, server, registry, _announce, doors)
        except OSError as e:  # the HTTP port, taken since the check above
            raise CommandError(f"--http-port: cannot listen on {server.host} ({e})") from e
    finally:
        await engine.close()
    return 0


def _announce(line: str) -> None:
    print(f"rlfleet serve sandbox: {line}", file=sys.stderr, flush=True)
