"""Conventions shared by every rlfleet gRPC service.

``grpc.aio`` server on loopback by default, message sizes set deliberately, the standard
health and reflection services, optional TLS, one interceptor turning exceptions into status
codes, graceful shutdown on SIGTERM/SIGINT (health NOT_SERVING, then ``stop(grace)``), and
Prometheus metrics on a side port.

Errors: servicers raise the exceptions below (or let bugs escape) and never build statuses
themselves; ``ErrorInterceptor`` is the single place that maps them, for all four RPC shapes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from rlfleet.heap import freeze_startup_objects

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class BadRequest(ValueError):
    """Invalid input: INVALID_ARGUMENT, with a message that starts with the field's name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ResourceExhausted(RuntimeError):
    """No room for this request now, or ever at this size: RESOURCE_EXHAUSTED."""


class QueueFull(ResourceExhausted):
    """Admission control refused the work: retry later, or on another server."""


class NotFound(KeyError):
    """A referenced object is unknown: NOT_FOUND.

    Only this subclass maps to NOT_FOUND: a bare ``KeyError`` is a bug of ours and stays
    INTERNAL instead of telling the client its reference was wrong.
    """

    def __str__(self) -> str:  # KeyError's own str() quotes the message
        return str(self.args[0]) if self.args else "not found"


class FailedPrecondition(RuntimeError):
    """The request is valid but the server is not in a state to do it (a weight update
    whose version is not newer than the one serving): FAILED_PRECONDITION."""


class DataLoss(ValueError):
    """A streamed payload arrived incomplete or corrupt (truncated, checksum mismatch):
    DATA_LOSS."""


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a failure is reported with (no internals for bugs)."""
    if isinstance(exc, BadRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, DataLoss):
        return grpc.StatusCode.DATA_LOSS, str(exc)
    if isinstance(exc, FailedPrecondition):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, ResourceExhausted):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error"


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    """Address to bind; loopback unless told otherwise."""
    port: int = 50051
    """gRPC port; 0 picks a free one (``Server.port`` says which)."""
    max_message_mb: int = 64
    """Largest request or response: a big test suite fits, anything larger is refused
    with RESOURCE_EXHAUSTED before it is buffered (gRPC's default is only 4 MiB)."""
    tls_cert: Path | None = None
    """PEM certificate chain; with ``tls_key`` the port speaks TLS only."""
    tls_key: Path | None = None
    """PEM private key for ``tls_cert``."""
    grace_s: float = 30.0
    """On shutdown, calls in flight get this long to finish before they are cancelled."""
    metrics_port: int | None = None
    """Serve Prometheus metrics over HTTP on this port, on the same host; None: don't."""

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls: give both --tls-cert and --tls-key, or neither")


class Undecodable:
    """Stands in a request stream for an item that did not decode, so that the servicer
    can answer that one item with an error and keep the stream open."""

    def __init__(self, error: str) -> None:
        self.error = error


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions escaping a handler to status codes, for every method of every service.

    It also takes over decoding requests, so undecodable bytes are INVALID_ARGUMENT rather
    than the INTERNAL the default deserializer path gives, and the server stays healthy.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        decode = handler.request_deserializer
        encode = handler.response_serializer

        def parse(raw: bytes) -> Any:
            if decode is None:
                return raw
            try:
                return decode(raw)
            except Exception as e:
                raise BadRequest("request", f"not a valid message for {method}") from e

        async def decoded(requests: AsyncIterator[bytes]) -> AsyncIterator[Any]:
            async for raw in requests:
                try:
                    yield parse(raw)
                except BadRequest as e:
                    yield Undecodable(str(e))

        async def unary_result(call: Callable[[], Any], context: grpc.aio.ServicerContext) -> Any:
            try:
                reply = call()
                return await reply if inspect.isawaitable(reply) else reply
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as e:
                await _abort(context, method, e)

        async def stream_result(
            replies: Callable[[], AsyncIterator[Any]], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            try:
                out = replies()
                if inspect.isawaitable(out):
                    # A servicer that writes with ``context.write`` and returns nothing.
                    await out
                    return
                async for item in out:
                    yield item
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as e:
                await _abort(context, method, e)

        if handler.unary_unary:
            uu = handler.unary_unary

            async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
                return await unary_result(lambda: uu(parse(raw), context), context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, None, encode)
        if handler.stream_unary:
            su = handler.stream_unary

            async def stream_unary(
                requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
            ) -> Any:
                return await unary_result(lambda: su(decoded(requests), context), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, None, encode)
        if handler.unary_stream:
            us = handler.unary_stream

            # Async generator functions: that is how grpc.aio recognises streaming handlers.
            async def unary_stream(
                raw: bytes, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                async for item in stream_result(lambda: us(parse(raw), context), context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(unary_stream, None, encode)
        ss = handler.stream_stream

        async def stream_stream(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async for item in stream_result(lambda: ss(decoded(requests), context), context):
                yield item

        return grpc.stream_stream_rpc_method_handler(stream_stream, None, encode)


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    code, message = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        # The client sees "internal error" only; the traceback goes to our log.
        log.error("%s failed", method, exc_info=exc)
    await context.abort(code, message)


@dataclass
class Server:
    """A built server: ``start()`` it, or hand it to ``run_until_signalled``."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    services: Sequence[str]

    async def start(self) -> None:
        await self.server.start()
        await self.set_serving(True)

    async def stop(self, grace_s: float | None) -> None:
        """Report NOT_SERVING first (load balancers drain us), then let calls finish."""
        await self.set_serving(False)
        await self.server.stop(grace_s)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.services):
            await self.health.set(name, status)


def build_server(
    config: ServerConfig, register: Callable[[grpc.aio.Server], None], services: Sequence[str]
) -> Server:
    """A bound server with health, reflection and the error interceptor; ``start`` it next.

    ``register`` adds the servicers (``add_XServicer_to_server``); ``services`` are their
    full names, reported by health and listed by reflection.
    """
    size = config.max_message_mb << 20
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
            # Two servers must never share a port by accident (tests bind port 0 in parallel).
            ("grpc.so_reuseport", 0),
        ],
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*services, HEALTH_SERVICE, reflection.SERVICE_NAME), server
    )
    address = f"{config.host}:{config.port}"
    if config.tls_cert is not None and config.tls_key is not None:
        creds = grpc.ssl_server_credentials(
            [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())]
        )
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return Server(server=server, health=health_servicer, port=port, services=tuple(services))


def start_metrics(
    port: int, host: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> WSGIServer:
    """Serve ``registry`` (default: a fresh empty one, never the global) at /metrics.

    Runs in prometheus_client's own thread; returns its HTTP server (``.shutdown()``).
    """
    http_server, _ = start_http_server(port, addr=host, registry=registry or CollectorRegistry())
    return http_server


class Door(Protocol):
    """Another way into the same service, in the same process (``sandbox.http_door``)."""

    async def start(self) -> str:
        """Start serving; returns a line saying where."""
        ...

    async def stop(self) -> None:
        """Stop accepting, let calls in flight finish within its grace, close."""
        ...


async def run_until_signalled(
    srv: Server,
    config: ServerConfig,
    registry: CollectorRegistry | None = None,
    announce: Callable[[str], None] | None = None,
    doors: Sequence[Door] = (),
) -> None:
    """Serve until SIGTERM/SIGINT (or cancellation), then shut down gracefully.

    ``doors`` open after the gRPC port and close with it, drained at the same time.
    ``announce`` gets each door's line, then, once everything accepts calls, "listening on
    HOST:PORT" (the gRPC port) last.
    """
    metrics = None
    if config.metrics_port is not None:
        metrics = start_metrics(config.metrics_port, config.host, registry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    opened: list[Door] = []
    try:
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        await srv.start()
        for door in doors:
            line = await door.start()
            opened.append(door)
            if announce is not None:
                announce(line)
        freeze_startup_objects()
        if announce is not None:
            announce(f"listening on {config.host}:{srv.port}")
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        # Shielded: a second Ctrl-C or the caller's cancellation must not cut the grace short.
        await asyncio.shield(
            asyncio.gather(srv.stop(config.grace_s), *(door.stop() for door in opened))
        )
        if metrics is not None:
            metrics.shutdown()
