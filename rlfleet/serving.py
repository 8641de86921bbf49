"""Conventions shared by every rlfleet gRPC service.

``grpc.aio`` server on loopback by default, message sizes set deliberately, health and
reflection services, optional TLS, one interceptor turning exceptions into status codes,
graceful shutdown (health NOT_SERVING, then ``stop(grace)``), Prometheus on a side port.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """Invalid input: INVALID_ARGUMENT, the message names the field."""


class Overloaded(RuntimeError):
    """No room for more work now: RESOURCE_EXHAUSTED (retry later or elsewhere)."""


class NotFound(KeyError):
    """A referenced object is unknown: NOT_FOUND."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a failure is reported with."""
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, ValueError):  # BadRequest, CaseError and other validation errors
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error"


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    """Address to bind; loopback unless told otherwise."""
    port: int = 50051
    """0 picks a free port."""
    max_message_mb: int = 64
    """Largest request or response (a test suite with big inputs fits; more is refused)."""
    tls_cert: Path | None = None
    """PEM certificate chain; with ``tls_key`` the port speaks TLS only."""
    tls_key: Path | None = None
    grace_s: float = 30.0
    """On shutdown, calls in flight get this long to finish."""
    metrics_port: int | None = None
    """Serve Prometheus metrics over HTTP on this port (same host)."""

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls: give both --tls-cert and --tls-key, or neither")


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions escaping a handler to status codes (one place for every service).

    Requests are decoded here too, so undecodable bytes are INVALID_ARGUMENT, not INTERNAL.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        decode = handler.request_deserializer
        encode = handler.response_serializer

        def parse(raw: bytes) -> Any:
            if decode is None:
                return raw
            try:
                return decode(raw)
            except Exception as e:
                raise BadRequest(f"request: not a valid message for {details.method}") from e

        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
                try:
                    reply = inner(parse(raw), context)
                    return await reply if inspect.isawaitable(reply) else reply
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as e:
                    await _abort(context, details.method, e)

            return grpc.unary_unary_rpc_method_handler(unary, None, encode)
        if handler.stream_stream:
            inner_stream = handler.stream_stream

            async def stream(
                requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                async def decoded() -> AsyncIterator[Any]:
                    async for raw in requests:
                        yield raw if decode is None else _try_decode(decode, raw)

                try:
                    async for item in inner_stream(decoded(), context):
                        yield item
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as e:
                    await _abort(context, details.method, e)

            return grpc.stream_stream_rpc_method_handler(stream, None, encode)
        return handler


class Undecodable:
    """Stands in a request stream for an item that did not decode (so the stream lives on)."""

    def __init__(self, error: str) -> None:
        self.error = error


def _try_decode(decode: Callable[[bytes], Any], raw: bytes) -> Any:
    try:
        return decode(raw)
    except Exception:
        return Undecodable("request: not a valid message")


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    code, message = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method, exc_info=exc)
    await context.abort(code, message)


@dataclass
class Server:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    services: Sequence[str]

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
    """A server with health, reflection and the error interceptor; call ``start`` next."""
    size = config.max_message_mb << 20
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
            ("grpc.so_reuseport", 0),
        ],
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (
        *services,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    address = f"{config.host}:{config.port}"
    if config.tls_cert and config.tls_key:
        creds = grpc.ssl_server_credentials(
            [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())]
        )
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return Server(server=server, health=health_servicer, port=port, services=services)


async def run_until_signalled(
    srv: Server,
    config: ServerConfig,
    registry: CollectorRegistry | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or cancellation), then shut down gracefully."""
    metrics_server = None
    if config.metrics_port is not None:
        metrics_server, _ = start_http_server(
            config.metrics_port, addr=config.host, registry=registry or CollectorRegistry()
        )
    await srv.server.start()
    await srv.set_serving(True)
    if announce:
        announce(f"listening on {config.host}:{srv.port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await srv.set_serving(False)
        await srv.server.stop(config.grace_s)
        if metrics_server is not None:
            metrics_server.shutdown()
