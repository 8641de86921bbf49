"""SGLang's HTTP surface, as the pinned version (see docs/sglang.md) serves it: the
``/generate`` stream (the fallback generation path) and the weight-update routes.

A small HTTP/1.1 client on asyncio streams (one connection per call, ``Connection: close``)
rather than a new dependency: the adapter needs JSON in, JSON or server-sent events out,
and nothing else. Route names and body fields are checked against the pinned wheel's own
source by tests/test_sglang_contract.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from rlfleet.rollout.engine import EngineError

PauseMode = Literal["abort", "retract", "in_place"]

MAX_LINE = 64 * 1024


class SglangRequestError(EngineError):
    """SGLang answered a call with an error; the message has the route, the HTTP status
    and SGLang's own message."""

    def __init__(self, route: str, status: int, message: str) -> None:
        super().__init__(f"SGLang {route}: HTTP {status}: {message}")
        self.route = route
        self.status = status
        self.detail = message


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = (await reader.readline()).decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ConnectionError(f"not an HTTP response: {status_line.strip()!r}")
    headers: dict[str, str] = {}
    while True:
        line = (await reader.readline()).decode("latin-1")
        if line in ("\r\n", "\n", ""):
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _body_pieces(
    reader: asyncio.StreamReader, headers: dict[str, str]
) -> AsyncIterator[bytes]:
    """The response body as it arrives: chunked (uvicorn's streaming responses), a
    Content-Length, or up to the end of the connection."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise ConnectionError("connection closed inside a chunked body")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return
            yield await reader.readexactly(size)
            await reader.readexactly(2)
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while piece := await reader.read(65536):
            yield piece


class SglangHttp:
    """Calls to one SGLang HTTP server."""

    def __init__(self, host: str, port: int, *, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        """Bound on connecting and on each read of an answer."""

    async def _open(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, limit=MAX_LINE), self.timeout_s
        )
        data = json.dumps(body).encode() if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Connection: close\r\nAccept: */*\r\n"
        )
        if body is not None:
            head += "Content-Type: application/json\r\n"
        head += f"Content-Length: {len(data)}\r\n\r\n"
        writer.write(head.encode("latin-1") + data)
        await writer.drain()
        return reader, writer

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Response:
        reader, writer = await self._open(method, path, body)
        try:
            status, headers = await asyncio.wait_for(_read_head(reader), self.timeout_s)
            pieces = [p async for p in _body_pieces(reader, headers)]
            return Response(status, b"".join(pieces))
        finally:
            writer.close()

    async def post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a control route answering ``{"success", "message"}`` (or a bare status);
        SglangRequestError unless it succeeded."""
        resp = await self.call("POST", route, body)
        try:
            answer = resp.json()
        except (UnicodeDecodeError, json.JSONDecodeError):
            answer = None
        message = ""
        if isinstance(answer, dict):
            message = str(answer.get("message") or answer.get("error") or answer.get("detail"))
        elif resp.body:
            message = resp.body.decode("utf-8", "replace").strip()
        if resp.status != 200 or (isinstance(answer, dict) and answer.get("success") is False):
            raise SglangRequestError(route, resp.status, message or "no message")
        return answer if isinstance(answer, dict) else {}

    # -- generation --------------------------------------------------------------------------

    async def generate_stream(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """POST /generate with ``stream: true`` and yield each event's JSON object, up to
        ``data: [DONE]``. An event ``{"error": ...}`` (SGLang's in-stream error) raises."""
        reader, writer = await self._open("POST", "/generate", body)
        try:
            status, headers = await asyncio.wait_for(_read_head(reader), self.timeout_s)
            if status != 200:
                pieces = [p async for p in _body_pieces(reader, headers)]
                raise SglangRequestError("/generate", status, _error_text(b"".join(pieces)))
            buffer = b""
            body_iter = _body_pieces(reader, headers).__aiter__()
            while True:
                try:
                    piece = await asyncio.wait_for(body_iter.__anext__(), self.timeout_s)
                except StopAsyncIteration:
                    raise EngineError("SGLang /generate: stream ended before [DONE]") from None
                buffer += piece.replace(b"\r\n", b"\n")
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    for line in event.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            return
                        obj = json.loads(data)
                        if isinstance(obj, dict) and "error" in obj:
                            raise SglangRequestError("/generate", status, _error_text(data))
                        yield obj
        finally:
            writer.close()

    async def abort_request(self, rid: str) -> None:
        """POST /abort_request: SGLang answers 200 with an empty body, found or not."""
        resp = await self.call("POST", "/abort_request", {"rid": rid})
        if resp.status != 200:
            raise SglangRequestError("/abort_request", resp.status, _error_text(resp.body))

    # -- state -------------------------------------------------------------------------------

    async def healthy(self, timeout_s: float) -> bool:
        """GET /health: 200 once the server is up and a probe generation went through."""
        try:
            resp = await asyncio.wait_for(self.call("GET", "/health"), timeout_s)
        except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            return False
        return resp.status == 200

    async def model_info(self) -> dict[str, Any]:
        resp = await self.call("GET", "/model_info")
        if resp.status != 200:
            raise SglangRequestError("/model_info", resp.status, _error_text(resp.body))
        info = resp.json()
        if not isinstance(info, dict):
            raise EngineError("SGLang /model_info: not a JSON object")
        return info

    async def flush_cache(self) -> None:
        resp = await self.call("POST", "/flush_cache")
        if resp.status != 200:
            raise SglangRequestError("/flush_cache", resp.status, _error_text(resp.body))

    # -- weight updates ----------------------------------------------------------------------

    async def pause_generation(self, mode: PauseMode) -> None:
        await self.post("/pause_generation", {"mode": mode})

    async def continue_generation(self) -> None:
        await self.post("/continue_generation", {})

    async def begin_weight_update(self) -> None:
        await self.post("/begin_weight_update", {})

    async def end_weight_update(self) -> None:
        await self.post("/end_weight_update", {})

    async def update_weights_from_disk(
        self, *, model_path: str, weight_version: str, flush_cache: bool = True
    ) -> dict[str, Any]:
        return await self.post(
            "/update_weights_from_disk",
            {
                "model_path": model_path,
                "weight_version": weight_version,
                "flush_cache": flush_cache,
            },
        )

    async def update_weights_from_tensor(
        self,
        *,
        serialized_named_tensors: list[str],
        weight_version: str,
        load_format: str | None = None,
        flush_cache: bool = True,
    ) -> dict[str, Any]:
        """``serialized_named_tensors``: one base64 string per tensor-parallel rank, each
        SGLang's own ``MultiprocessingSerializer`` bytes (torch's shared-memory handles:
        same host only)."""
        body: dict[str, Any] = {
            "serialized_named_tensors": serialized_named_tensors,
            "weight_version": weight_version,
            "flush_cache": flush_cache,
        }
        if load_format is not None:
            body["load_format"] = load_format
        return await self.post("/update_weights_from_tensor", body)

    async def init_weights_update_group(
        self,
        *,
        master_address: str,
        master_port: int,
        rank_offset: int,
        world_size: int,
        group_name: str,
        backend: str = "nccl",
    ) -> dict[str, Any]:
        return await self.post(
            "/init_weights_update_group",
            {
                "master_address": master_address,
                "master_port": master_port,
                "rank_offset": rank_offset,
                "world_size": world_size,
                "group_name": group_name,
                "backend": backend,
            },
        )

    async def update_weights_from_distributed(
        self,
        *,
        names: list[str],
        dtypes: list[str],
        shapes: list[list[int]],
        group_name: str,
        weight_version: str,
        flush_cache: bool = True,
    ) -> dict[str, Any]:
        return await self.post(
            "/update_weights_from_distributed",
            {
                "names": names,
                "dtypes": dtypes,
                "shapes": shapes,
                "group_name": group_name,
                "weight_version": weight_version,
                "flush_cache": flush_cache,
            },
        )


def _error_text(body: bytes) -> str:
    """SGLang's error message out of whichever shape it came in."""
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return body.decode("utf-8", "replace").strip() or "no message"
    if isinstance(obj, dict):
        err = obj.get("error", obj.get("detail", obj.get("message", obj)))
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        return str(err)
    return str(obj)
