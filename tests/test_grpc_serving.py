"""rlfleet.grpc_server's error interceptor on all four RPC shapes, with a bare generic service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from rlfleet.grpc_server import BadRequest, NotFound, QueueFull, ServerConfig, build_server

ERRORS: dict[bytes, Exception] = {
    b"bad": BadRequest("tests[3].stdout", "missing"),
    b"full": QueueFull("queue full"),
    b"gone": NotFound("problem_ref: unknown 'x'"),
    b"keyerror": KeyError("a bug of ours"),
    b"bug": RuntimeError("secret detail"),
}
EXPECTED = {
    b"bad": (grpc.StatusCode.INVALID_ARGUMENT, "tests[3].stdout: missing"),
    b"full": (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"),
    b"gone": (grpc.StatusCode.NOT_FOUND, "problem_ref: unknown 'x'"),
    b"keyerror": (grpc.StatusCode.INTERNAL, "internal error"),
    b"bug": (grpc.StatusCode.INTERNAL, "internal error"),
}


def _check(what: bytes) -> bytes:
    if what in ERRORS:
        raise ERRORS[what]
    return b"ok:" + what


async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return _check(request)


async def unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    yield _check(request)


async def stream_unary(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    last = b""
    async for last in requests:
        _check(last)
    return b"ok:" + last


async def stream_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield _check(request)


def _register(server: grpc.aio.Server) -> None:
    handlers = {
        "UU": grpc.unary_unary_rpc_method_handler(unary_unary),
        "US": grpc.unary_stream_rpc_method_handler(unary_stream),
        "SU": grpc.stream_unary_rpc_method_handler(stream_unary),
        "SS": grpc.stream_stream_rpc_method_handler(stream_stream),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", handlers)])


@pytest.mark.parametrize("what", sorted(ERRORS))
async def test_each_shape_maps_exceptions_to_statuses(what: bytes) -> None:
    srv = build_server(ServerConfig(port=0), _register, ["test.Echo"])
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            assert await channel.unary_unary("/test.Echo/UU")(b"hi") == b"ok:hi"
            calls = {
                "UU": lambda: channel.unary_unary("/test.Echo/UU")(what),
                "SU": lambda: channel.stream_unary("/test.Echo/SU")(iter([b"a", what])),
            }
            for name, call in calls.items():
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call()
                assert (err.value.code(), err.value.details()) == EXPECTED[what], name
            streams = {
                "US": lambda: channel.unary_stream("/test.Echo/US")(what),
                "SS": lambda: channel.stream_stream("/test.Echo/SS")(iter([b"a", what])),
            }
            for name, open_stream in streams.items():
                got: list[bytes] = []
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for item in open_stream():
                        got.append(item)
                assert len(got) == 1, name  # what came before the failure was delivered
                assert (err.value.code(), err.value.details()) == EXPECTED[what], name
    finally:
        await srv.stop(0)
