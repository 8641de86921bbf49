"""The verifier's HTTP door: SandboxFusion's ``POST /run_code`` (and ``GET /v1/ping``).

It runs in the gRPC server's process and event loop, in front of the same engine and pool,
through the same admission control and metrics (``VerifierService.admitted``): a request is
one pending case, which waits for a slot while the queue is full (``queue_wait_s``, then a
504), counted under kind ``run``.
Programs run in the sandbox workers as every case does, never in this process.

Errors: 400 for a body that is not JSON, 413 for one over the message size, 422 for a
field that is wrong (FastAPI's code, which SandboxFusion answers with), each with a JSON
``{"detail": "<field>: <what is wrong>", "field": "<field>"}``; 504 when the queue stayed
full for ``queue_wait_s``;
500 "internal error" for our bugs (logged here, never shown). A client that goes away
cancels its run, which frees its worker at once, as gRPC cancellation does. Large bodies
and outputs are decoded and encoded off the event loop, as the gRPC servicer converts big
requests, so one does not stall every other call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Protocol

from aiohttp import web

from rlfleet.grpc_server import QueueFull, ServerConfig
from rlfleet.sandbox.cases import CaseError
from rlfleet.sandbox.fusion import HttpConfig, parse_run_code, run_code_response
from rlfleet.sandbox.runcode import ProgramOutcome, ProgramRun
from rlfleet.sandbox.servicer import INLINE_CONVERT_BYTES, VerifierService

log = logging.getLogger(__name__)

RUN_KIND = "run"
"""The ``kind`` label of ``rlfleet_verifier_cases`` for programs run through this door."""


class ProgramEngine(Protocol):
    """What the door needs from the engine (``sandbox.engine.Engine``)."""

    async def run_program(self, program: ProgramRun) -> ProgramOutcome: ...


def _error(status: int, field: str, message: str) -> web.Response:
    return web.json_response({"detail": f"{field}: {message}", "field": field}, status=status)


class HttpDoor:
    """``await start()``, then ``await stop()``: SandboxFusion's API over ``service``."""

    def __init__(
        self,
        config: HttpConfig,
        server: ServerConfig,
        service: VerifierService,
        engine: ProgramEngine,
    ) -> None:
        self.config = config
        self.server = server
        self.service = service
        self.engine = engine
        self.app = web.Application(client_max_size=server.max_message_mb << 20)
        self.app.router.add_post("/run_code", self.run_code)
        self.app.router.add_get("/v1/ping", self.ping)
        self._runner: web.AppRunner | None = None
        self.port = config.port

    @property
    def url(self) -> str:
        scheme = "https" if self.server.tls_cert is not None else "http"
        return f"{scheme}://{self.server.host}:{self.port}"

    def _ssl_context(self) -> ssl.SSLContext | None:
        cert, key = self.server.tls_cert, self.server.tls_key
        if cert is None or key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key, password=lambda: "")
        return context

    async def start(self) -> str:
        """Bind and serve; returns the line that announces where."""
        # Cancelling the handler of a client that went away stops its run in the sandbox.
        runner = web.AppRunner(
            self.app,
            handler_cancellation=True,
            shutdown_timeout=self.server.grace_s,
            access_log=None,
        )
        await runner.setup()
        site = web.TCPSite(
            runner,
            self.server.host,
            self.config.port,
            ssl_context=self._ssl_context(),
            reuse_port=False,
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        return f"SandboxFusion-compatible /run_code at {self.url}/run_code"

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (the server's ``grace_s``), then
        close."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response("pong")

    async def run_code(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.service.metrics.rejected.labels("too_large").inc()
            limit = self.server.max_message_mb
            return _error(413, "body", f"larger than the {limit} MiB this server takes")
        try:
            if len(body) > INLINE_CONVERT_BYTES:
                program = await asyncio.to_thread(self._parse, body)
            else:
                program = self._parse(body)
        except _BadBody as e:
            self.service.metrics.rejected.labels("invalid").inc()
            return _error(400, "body", f"not valid JSON ({e.__cause__})")
        except CaseError as e:
            self.service.metrics.rejected.labels("invalid").inc()
            return _error(422, e.field, e.message)
        try:
            outcome = await self.service.admitted(
                lambda: self.engine.run_program(program), self.config.run_code.queue_wait_s
            )
        except QueueFull as e:
            # 504, not 503: what SandboxFusion's clients retry (after waiting their turn).
            return web.json_response(
                {"detail": str(e), "field": ""}, status=504, headers={"Retry-After": "1"}
            )
        except Exception:
            log.exception("/run_code failed")
            self.service.metrics.rejected.labels("internal").inc()
            return web.json_response({"detail": "internal error", "field": ""}, status=500)
        self.service.metrics.cases.labels(RUN_KIND, program.language.name, outcome.label).inc()
        reply = run_code_response(outcome)
        if _output_bytes(outcome) > INLINE_CONVERT_BYTES:
            text = await asyncio.to_thread(json.dumps, reply)
        else:
            text = json.dumps(reply)
        return web.Response(text=text, content_type="application/json")

    def _parse(self, body: bytes) -> ProgramRun:
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError) as e:  # (RecursionError: nested too deeply)
            raise _BadBody() from e
        return parse_run_code(obj, self.config.run_code)


class _BadBody(ValueError):
    """The body is not JSON (the cause says why)."""


def _output_bytes(outcome: ProgramOutcome) -> int:
    commands = [c for c in (outcome.compile, outcome.run) if c is not None]
    return sum(len(c.stdout) + len(c.stderr) for c in commands)
