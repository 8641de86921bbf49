"""Faithful fakes of the pinned SGLang's two surfaces, for the sglang engine's tests.

- ``FakeScheduler``: the gRPC scheduler service, built on smg-grpc-proto's own generated
  servicer base class, so the wire contract is SGLang's. It streams as the model-gateway
  servicer (smg-grpc-servicer's ``SGLangSchedulerServicer``) does with ``stream=True``: one
  chunk per decode step with the new token ids and their output logprobs, then, from the
  same last output, a ``GenerateComplete`` whose ``output_ids`` repeat only that last chunk.
  A client cancel and an ``Abort`` both abort the request; an aborted request ends with
  ``finish_reason "abort"``.
- ``FakeHttpSglang``: the HTTP server (stdlib ``http.server`` in a thread): ``/generate``
  streamed as cumulative ``data: {...}`` events ending ``data: [DONE]`` over chunked
  transfer encoding (uvicorn's), with ``meta_info`` (finish_reason, weight_version, the
  per-token ``weight_versions`` spans, ``output_token_logprobs`` triples), and the weight
  routes with SGLang's request fields, its answers and its error answers: a weight-update
  session (``begin_weight_update`` / ``end_weight_update``) required around tensor and NCCL
  updates, pause modes, an unpaused disk update waiting for the requests in flight. Every
  control call is recorded in order. With ``receive_dir`` set, the NCCL routes are real (on
  gloo): ``/init_weights_update_group`` joins the caller's process group as SGLang's
  ``init_custom_process_group`` does (a ``tcp://`` rendezvous on rank 0's store, the keys under
  the group's name, the group created under that name), and ``/update_weights_from_distributed``
  receives each tensor by broadcast from rank 0, in order, and writes what it received to
  ``receive_dir/v<weight_version>.pt``.

The fields and routes used here are checked against the pinned wheel's source by
test_sglang_contract.py (``GENERATE_FIELDS``, ``SAMPLING_FIELDS``, ``ROUTE_FIELDS``).

The "model": token ``t`` at output position ``i`` is a pure function of the prompt, ``i``,
the weight version and (sampling) the seed, so tests know what to expect.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from smg_grpc_proto.generated import common_pb2, sglang_scheduler_pb2, sglang_scheduler_pb2_grpc

VOCAB = 50
SGLANG_VERSION = "0.5.23"


def fake_token(prompt: list[int], position: int, version: str, seed: int | None) -> int:
    base = sum(prompt) * 31 + position * 7 + len(version) + sum(map(ord, version)) * 13
    if seed is not None:
        base += random.Random(seed * 1000003 + position).randrange(VOCAB)
    return base % VOCAB


def fake_logprob(token: int, position: int) -> float:
    return -0.01 * (1 + (token + position) % 97)


# -- gRPC ---------------------------------------------------------------------------------


class FakeScheduler(sglang_scheduler_pb2_grpc.SglangSchedulerServicer):
    """SGLang's scheduler service in ``--smg-grpc-mode``, on a tiny fake model."""

    def __init__(self, *, step_s: float = 0.002, version: str = "0", eos: int | None = None):
        self.step_s = step_s
        self.version = version
        self.eos = eos
        self.healthy = True
        self.requests: list[sglang_scheduler_pb2.GenerateRequest] = []
        self.aborts: list[str] = []
        """Request ids aborted, by an Abort call or by the client cancelling."""
        self.flushes = 0
        self.fail: tuple[grpc.StatusCode, str] | None = None
        """Set: the next Generate ends with this status (the servicer's context.abort)."""
        self._active: dict[str, asyncio.Event] = {}

    def _abort(self, rid: str) -> bool:
        event = self._active.get(rid)
        if event is None:
            return False
        self.aborts.append(rid)
        event.set()
        return True

    async def Generate(
        self, request: sglang_scheduler_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sglang_scheduler_pb2.GenerateResponse]:
        self.requests.append(request)
        if not request.HasField("tokenized"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "Tokenized input must be provided"
            )
        if self.fail is not None:
            code, message = self.fail
            self.fail = None
            await context.abort(code, message)
        rid = request.request_id
        params = request.sampling_params
        prompt = list(request.tokenized.input_ids)
        limit = params.max_new_tokens if params.HasField("max_new_tokens") else 128
        aborted = self._active[rid] = asyncio.Event()
        produced = 0
        try:
            while True:
                await asyncio.sleep(self.step_s)
                if aborted.is_set():
                    yield self._complete(rid, [], [], "abort", produced)
                    return
                token = fake_token(prompt, produced, self.version, None)
                produced += 1
                finish = None
                if token in params.stop_token_ids or token == self.eos:
                    finish = "stop"
                elif produced >= limit:
                    finish = "length"
                logprobs = [fake_logprob(token, produced - 1)]
                yield sglang_scheduler_pb2.GenerateResponse(
                    request_id=rid,
                    chunk=sglang_scheduler_pb2.GenerateStreamChunk(
                        token_ids=[token],
                        prompt_tokens=len(prompt),
                        completion_tokens=produced,
                        output_logprobs=_logprobs_pb([token], logprobs),
                    ),
                )
                if finish is not None:
                    # The servicer builds Complete from the same (incremental) output.
                    yield self._complete(rid, [token], logprobs, finish, produced)
                    return
        except asyncio.CancelledError:
            # The servicer aborts a request whose client went away.
            self._abort(rid)
            raise
        finally:
            self._active.pop(rid, None)

    def _complete(
        self, rid: str, ids: list[int], logprobs: list[float], reason: str, produced: int
    ) -> sglang_scheduler_pb2.GenerateResponse:
        return sglang_scheduler_pb2.GenerateResponse(
            request_id=rid,
            complete=sglang_scheduler_pb2.GenerateComplete(
                output_ids=ids,
                finish_reason=reason,
                completion_tokens=produced,
                output_logprobs=_logprobs_pb(ids, logprobs) if ids else None,
            ),
        )

    async def Abort(
        self, request: sglang_scheduler_pb2.AbortRequest, context: grpc.aio.ServicerContext
    ) -> sglang_scheduler_pb2.AbortResponse:
        found = self._abort(request.request_id)
        return sglang_scheduler_pb2.AbortResponse(
            success=found,
            message=f"Request {request.request_id} {'aborted' if found else 'not found'}",
        )

    async def HealthCheck(
        self, request: sglang_scheduler_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> sglang_scheduler_pb2.HealthCheckResponse:
        if not self.healthy:
            return sglang_scheduler_pb2.HealthCheckResponse(
                healthy=False, message="Health check timeout after 20s"
            )
        return sglang_scheduler_pb2.HealthCheckResponse(healthy=True, message="Health check passed")

    async def GetLoads(
        self, request: sglang_scheduler_pb2.GetLoadsRequest, context: grpc.aio.ServicerContext
    ) -> sglang_scheduler_pb2.GetLoadsResponse:
        running = len(self._active)
        return sglang_scheduler_pb2.GetLoadsResponse(
            timestamp=datetime.now(UTC).isoformat(),
            version=SGLANG_VERSION,
            dp_rank_count=1,
            loads=[
                sglang_scheduler_pb2.SchedulerLoad(
                    dp_rank=0, num_running_reqs=running, num_total_reqs=running
                )
            ],
            aggregate=sglang_scheduler_pb2.AggregateMetrics(
                total_running_reqs=running, total_reqs=running
            ),
        )

    async def FlushCache(
        self, request: common_pb2.FlushCacheRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.FlushCacheResponse:
        self.flushes += 1
        return common_pb2.FlushCacheResponse(success=True, message="Cache flushed successfully")


def _logprobs_pb(ids: list[int], values: list[float]) -> sglang_scheduler_pb2.OutputLogProbs:
    return sglang_scheduler_pb2.OutputLogProbs(token_logprobs=values, token_ids=ids)


async def serve_scheduler(
    servicer: FakeScheduler, host: str, port: int
) -> tuple[grpc.aio.Server, int]:
    """Serve on ``port`` (0: a free one); returns the server and its port."""
    server = grpc.aio.server()
    sglang_scheduler_pb2_grpc.add_SglangSchedulerServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {host}:{port}")
    await server.start()
    return server, bound


# -- HTTP ---------------------------------------------------------------------------------

GENERATE_FIELDS = {"rid", "input_ids", "sampling_params", "return_logprob", "stream"}
"""Fields of SGLang's /generate body the fake understands (of sglang.api.v1's
GenerateRequest, which ignores unknown keys: the fake refuses them to keep the adapter to
these)."""
SAMPLING_FIELDS = {
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "stop_token_ids",
    "sampling_seed",
}
"""Sampling params the fake understands (SGLang's contract refuses unknown keys)."""

ROUTE_FIELDS: dict[str, tuple[str, set[str], set[str]]] = {
    # route: (io_struct request class, required fields, optional fields the fake accepts)
    "/pause_generation": ("PauseGenerationReqInput", set(), {"mode"}),
    "/continue_generation": ("ContinueGenerationReqInput", set(), {"torch_empty_cache"}),
    "/begin_weight_update": ("BeginWeightUpdateReqInput", set(), {"selector"}),
    "/end_weight_update": ("EndWeightUpdateReqInput", set(), set()),
    "/update_weights_from_disk": (
        "UpdateWeightFromDiskReqInput",
        {"model_path"},
        {"weight_version", "flush_cache", "load_format", "abort_all_requests"},
    ),
    "/update_weights_from_tensor": (
        "UpdateWeightsFromTensorReqInput",
        {"serialized_named_tensors"},
        {"weight_version", "flush_cache", "load_format", "abort_all_requests"},
    ),
    "/init_weights_update_group": (
        "InitWeightsUpdateGroupReqInput",
        {"master_address", "master_port", "rank_offset", "world_size"},
        {"group_name", "backend"},
    ),
    "/update_weights_from_distributed": (
        "UpdateWeightsFromDistributedReqInput",
        {"names", "dtypes", "shapes"},
        {"group_name", "weight_version", "flush_cache", "load_format", "abort_all_requests"},
    ),
    "/abort_request": ("AbortReq", set(), {"rid", "abort_all"}),
}
"""The control routes the fake serves, with the io_struct class FastAPI parses each body
into (every field the fake reads is one of that class's)."""

PAUSE_MODES = ("abort", "retract", "in_place")


@dataclass
class _Request:
    rid: str
    aborted: threading.Event = field(default_factory=threading.Event)


class FakeHttpSglang:
    """SGLang's HTTP server on a tiny fake model; ``start()`` it, ``calls`` records every
    control call as ``(route, body)`` in order."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        version: str = "0",
        step_s: float = 0.002,
        eos: int | None = None,
        receive_dir: Path | None = None,
        die_after_tensors: int | None = None,
        stall_receive: bool = False,
    ) -> None:
        self.version = version
        self.step_s = step_s
        self.eos = eos
        self.healthy = True
        self.paused = False
        self.session_open = False
        self.groups: set[str] = set()
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.generate_bodies: list[dict[str, Any]] = []
        self.staged: list[list[str]] = []
        """File names of each directory update_weights_from_disk loaded."""
        self.fail_update: str | None = None
        """Set: the next update_weights_* answers success false with this message."""
        self.receive_dir = receive_dir
        """Set: the NCCL routes join and receive for real (gloo), and save what came."""
        self.die_after_tensors = die_after_tensors
        """Set: the process exits at once after receiving this many tensors (a server gone
        mid-broadcast)."""
        self.stall_receive = stall_receive
        """Set: an update by broadcast never receives anything (a server that hangs)."""
        self.stopped = threading.Event()
        self.process_groups: dict[str, Any] = {}
        self.cond = threading.Condition()
        self.active: dict[str, _Request] = {}
        self.server = ThreadingHTTPServer((host, port), _handler(self))
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> FakeHttpSglang:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        with self.cond:
            for req in self.active.values():
                req.aborted.set()
            self.paused = False
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def routes(self) -> list[str]:
        return [route for route, _ in self.calls]

    # -- control routes (called with the lock held) ----------------------------------------

    def control(self, route: str, body: dict[str, Any]) -> tuple[int, Any]:
        self.calls.append((route, body))
        if route == "/pause_generation":
            mode = body.get("mode", "abort")
            if mode not in PAUSE_MODES:
                return 422, {"detail": f"mode: Input should be {PAUSE_MODES}"}
            self.paused = True
            if mode == "abort":
                for req in self.active.values():
                    req.aborted.set()
            return 200, {"message": "Generation paused successfully.", "status": "ok"}
        if route == "/continue_generation":
            self.paused = False
            self.cond.notify_all()
            return 200, {"message": "Generation continued successfully.", "status": "ok"}
        if route == "/abort_request":
            for rid, req in self.active.items():
                if body.get("abort_all") or rid == body.get("rid"):
                    req.aborted.set()
            return 200, None
        if route == "/begin_weight_update":
            if self.session_open:
                return 400, _result(
                    False, "a weight-update session is already open; call end_weight_update() first"
                )
            self.session_open = True
            return 200, _result(True, "Success")
        if route == "/end_weight_update":
            if not self.session_open:
                return 400, _result(
                    False, "no weight-update session is open; call begin_weight_update() first"
                )
            self.session_open = False
            return 200, _result(True, "Success")
        if route == "/init_weights_update_group":
            self.groups.add(body.get("group_name", "weight_update_group"))
            return 200, _result(True, "Succeeded to initialize custom process group.")
        if route == "/update_weights_from_disk":
            return self._update_from_disk(body)
        if route in ("/update_weights_from_tensor", "/update_weights_from_distributed"):
            name = route.lstrip("/")
            if not self.session_open:
                return 400, _result(
                    False, f"{name} must run between begin_weight_update() and end_weight_update()"
                )
            refused = self._refuse_distributed(route, body)
            if refused is not None:
                return refused
            return self._finish_update(body, "Succeeded to update parameter online.")
        raise AssertionError(route)

    def _refuse_distributed(self, route: str, body: dict[str, Any]) -> tuple[int, Any] | None:
        name = route.lstrip("/")
        if not self.session_open:
            return 400, _result(
                False, f"{name} must run between begin_weight_update() and end_weight_update()"
            )
        group = body.get("group_name", "weight_update_group")
        if route.endswith("distributed") and group not in self.groups:
            return 400, _result(
                False,
                f"Failed to receive weights: Group {group} not in {sorted(self.groups)}. "
                "Please call `init_weights_update_group` first.",
            )
        return None

    # -- the NCCL routes for real (receive_dir set; a handler thread, without the lock) ------

    def distributed(self, route: str, body: dict[str, Any]) -> tuple[int, Any]:
        if route == "/init_weights_update_group":
            with self.cond:
                self.calls.append((route, body))
            name = body.get("group_name", "weight_update_group")
            try:
                group = _join_group(body, name)
            except Exception as e:
                return 400, _result(False, f"Failed to initialize custom process group: {e}.")
            with self.cond:
                self.process_groups[name] = group
                self.groups.add(name)
            return 200, _result(True, "Succeeded to initialize custom process group.")
        with self.cond:
            self.calls.append((route, body))
            refused = self._refuse_distributed(route, body)
            if refused is not None:
                return refused
            group = self.process_groups[body.get("group_name", "weight_update_group")]
        if self.stall_receive:
            self.stopped.wait()
            return 503, _result(False, "stopped")
        try:
            received = self._receive(body, group)
        except Exception as e:
            return 400, _result(
                False,
                f"Failed to update parameter online: {e}. The full weights of the ModelRunner "
                "are partially updated. Please discard the whole weights.",
            )
        import torch

        assert self.receive_dir is not None
        torch.save(received, self.receive_dir / f"v{body.get('weight_version')}.pt")
        with self.cond:
            return self._finish_update(body, "Succeeded to update parameter online.")

    def _receive(self, body: dict[str, Any], group: Any) -> dict[str, Any]:
        import torch
        import torch.distributed as dist

        received: dict[str, Any] = {}
        for name, dtype, shape in zip(body["names"], body["dtypes"], body["shapes"], strict=True):
            tensor = torch.empty(shape, dtype=getattr(torch, dtype))
            dist.broadcast(tensor, src=0, group=group)
            received[name] = tensor
            if self.die_after_tensors is not None and len(received) >= self.die_after_tensors:
                os._exit(3)
        return received

    def _update_from_disk(self, body: dict[str, Any]) -> tuple[int, Any]:
        # Not paused: SGLang takes the model-update writer lock, which waits for every
        # request in flight to finish.
        while not self.paused and self.active:
            self.cond.wait()
        path = Path(body["model_path"])
        files = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        if not any(f.endswith(".safetensors") for f in files):
            return 400, _result(
                False,
                f"Failed to get weights iterator: Cannot find any model weights with `{path}`.",
                num_paused_requests=0,
            )
        self.staged.append(files)
        return self._finish_update(body, "Succeeded to update model weights.", disk=True)

    def _finish_update(
        self, body: dict[str, Any], ok: str, *, disk: bool = False
    ) -> tuple[int, Any]:
        extra = {"num_paused_requests": 0} if disk else {}
        if self.fail_update is not None:
            message, self.fail_update = self.fail_update, None
            return 400, _result(False, message, **extra)
        if body.get("flush_cache", True) and self.active and not self.paused:
            return 400, _result(
                False,
                "Weights were updated, but the cache was not flushed because requests are "
                "still running or queued. Retract or finish them, then call /flush_cache.",
                **extra,
            )
        if body.get("weight_version") is not None:
            self.version = str(body["weight_version"])
            ok += f" Weight version updated to {self.version}."
        return 200, _result(True, ok, **extra)

    # -- generation (a handler thread) ------------------------------------------------------

    def generation(self, body: dict[str, Any]) -> Any:
        """Yield the cumulative output objects of one request, as SGLang streams them."""
        params = body.get("sampling_params") or {}
        prompt = list(body["input_ids"])
        rid = body.get("rid") or f"fake-{time.monotonic_ns()}"
        limit = int(params.get("max_new_tokens", 128))
        stops = set(params.get("stop_token_ids") or ())
        seed = params.get("sampling_seed") if params.get("temperature", 1.0) > 0 else None
        req = _Request(rid)
        with self.cond:
            self.active[rid] = req
        ids: list[int] = []
        triples: list[list[Any]] = []
        spans: list[dict[str, Any]] = []
        try:
            while True:
                time.sleep(self.step_s)
                with self.cond:
                    # Paused (retract / in_place): the request waits in SGLang's queue.
                    while self.paused and not req.aborted.is_set():
                        self.cond.wait()
                    version = self.version
                if req.aborted.is_set():
                    yield _output(rid, prompt, ids, triples, spans, version, {
                        "type": "abort", "message": "Abort in waiting queue"})  # fmt: skip
                    return
                token = fake_token(prompt, len(ids), version, seed)
                ids.append(token)
                triples.append([fake_logprob(token, len(ids) - 1), token, None])
                if spans and spans[-1]["version"] == version:
                    spans[-1]["end"] = len(ids)
                else:
                    spans.append({"version": version, "start": len(ids) - 1, "end": len(ids)})
                finish: dict[str, Any] | None = None
                if token in stops or token == self.eos:
                    finish = {"type": "stop", "matched": token}
                elif len(ids) >= limit:
                    finish = {"type": "length", "length": limit}
                yield _output(rid, prompt, ids, triples, spans, version, finish)
                if finish is not None:
                    return
        finally:
            with self.cond:
                self.active.pop(rid, None)
                self.cond.notify_all()


def _join_group(body: dict[str, Any], name: str) -> Any:
    """This server's rank (rank_offset: one tensor-parallel rank) in the caller's group,
    made the way SGLang makes it: rendezvous on rank 0's store, keys under the group's name,
    the group created under that name and its ranks registered as global ones."""
    from datetime import timedelta

    import torch.distributed as dist
    from torch.distributed.distributed_c10d import (
        Backend,
        GroupName,
        _new_process_group_helper,
        _world,
    )

    timeout = timedelta(seconds=60)
    world = int(body["world_size"])
    url = f"tcp://{body['master_address']}:{body['master_port']}"
    store, rank, world = next(
        dist.rendezvous(url, int(body["rank_offset"]), world, timeout=timeout)
    )
    store.set_timeout(timeout)
    group, _ = _new_process_group_helper(
        world,
        rank,
        [],
        Backend(body.get("backend", "nccl")),
        dist.PrefixStore(name, store),
        group_name=GroupName(name),
        timeout=timeout,
    )
    _world.pg_group_ranks[group] = {i: i for i in range(world)}
    return group


def _result(success: bool, message: str, **extra: Any) -> dict[str, Any]:
    return {"success": success, "message": message, **extra}


def _output(
    rid: str,
    prompt: list[int],
    ids: list[int],
    triples: list[list[Any]],
    spans: list[dict[str, Any]],
    version: str,
    finish: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "text": "",
        "output_ids": list(ids),
        "meta_info": {
            "id": rid,
            "finish_reason": finish,
            "prompt_tokens": len(prompt),
            "weight_version": spans[-1]["version"] if spans else version,
            "weight_versions": [dict(s) for s in spans],
            "completion_tokens": len(ids),
            "cached_tokens": 0,
            "output_token_logprobs": [list(t) for t in triples],
        },
    }


def _handler(fake: FakeHttpSglang) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
            data = b"" if payload is None else (
                payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            )  # fmt: skip
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            size = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(size) if size else b""
            return json.loads(raw) if raw else {}

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200 if fake.healthy else 503, None)
            elif self.path in ("/model_info", "/get_model_info"):
                self._send(200, {
                    "model_path": "fake", "is_generation": True,
                    "weight_version": fake.version, "model_type": "qwen2",
                })  # fmt: skip
            else:
                self._send(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            try:
                body = self._body()
            except json.JSONDecodeError as err:
                self._send(422, {"detail": f"JSON decode error: {err}"})
                return
            if self.path == "/generate":
                self._generate(body)
            elif self.path == "/flush_cache":
                with fake.cond:
                    fake.calls.append(("/flush_cache", body))
                    busy = bool(fake.active) and not fake.paused
                self._send(400 if busy else 200, b"Flush cache failed.\n" if busy else (
                    b"Cache flushed.\nPlease check backend logs for more details. "
                    b"(When there are running or waiting requests, the operation will not be "
                    b"performed.)\n"), content_type="text/plain")  # fmt: skip
            elif self.path in ROUTE_FIELDS:
                _, required, optional = ROUTE_FIELDS[self.path]
                unknown = set(body) - required - optional
                missing = required - set(body)
                if unknown or missing:
                    self._send(
                        422, {"detail": f"missing {sorted(missing)}, unknown {sorted(unknown)}"}
                    )
                    return
                if fake.receive_dir is not None and self.path in (
                    "/init_weights_update_group",
                    "/update_weights_from_distributed",
                ):
                    status, answer = fake.distributed(self.path, body)
                else:
                    with fake.cond:
                        status, answer = fake.control(self.path, body)
                self._send(status, answer)
            else:
                self._send(404, {"detail": "Not Found"})

        def _generate(self, body: dict[str, Any]) -> None:
            # SGLang's contract check: unknown sampling keys are a 400 with its own text.
            params = body.get("sampling_params") or {}
            bad = sorted(set(params) - SAMPLING_FIELDS) or sorted(set(body) - GENERATE_FIELDS)
            if bad:
                self._send(400, {"error": f"unknown field `{bad[0]}`"})
                return
            if "input_ids" not in body:
                self._send(400, {"error": {"message": "The fake serves input_ids only",
                                           "type": "invalid_request_error", "code": 400}})  # fmt: skip
                return
            with fake.cond:
                fake.generate_bodies.append(body)
            if not body.get("stream"):
                *_, last = fake.generation(body)
                self._send(200, last)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            gen = fake.generation(body)
            try:
                for out in gen:
                    self._chunk(b"data: " + json.dumps(out).encode() + b"\n\n")
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")
            except (BrokenPipeError, ConnectionResetError):
                # The client went away: SGLang's background task aborts the request.
                rid = body.get("rid")
                with fake.cond:
                    if rid in fake.active:
                        fake.active[rid].aborted.set()
                        fake.calls.append(("disconnect", {"rid": rid}))
                    fake.cond.notify_all()
            finally:
                gen.close()

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    return Handler
