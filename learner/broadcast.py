"""Weights pushed by broadcast (``push.transport = "distributed"``): the learner's rank 0
and each rollout server's engine ranks form a process group of their own (a *weight
group*, never the FSDP group), and every new version is broadcast in it from rank 0,
tensor by tensor in manifest order, while the server's BroadcastWeights call waits.

One group per server: a server that dies or hangs mid-broadcast breaks its own group only;
the others go on, and the broken one is joined anew (a new name) at the next push. The
group is set up as SGLang's ``init_weights_update_group`` sets up its side
(``rollout.weight_group``): rank 0 (here) serves a TCP store, the members connect to it,
with NCCL between GPUs (the learner's side created eagerly, on its device) or gloo on CPU.
Every wait is bounded by ``PushConfig.timeout_s``: a join, the server's acceptance, each
tensor's broadcast.

Gathering is a collective as for the gRPC push: every rank runs the gather to its end
(``export.iter_full_tensors``), rank 0 alone broadcasts, a bucket of tensors at a time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import secrets
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, TypeVar

import grpc
import torch
import torch.distributed as dist
from torch import nn

from rlfleet.errors import UsageError
from rlfleet.learner.export import drain, iter_full_tensors, tensor_specs
from rlfleet.rollout.client import (
    DEFAULT_BUCKET_BYTES,
    BroadcastCall,
    GroupNotJoined,
    RolloutClient,
    WeightsRejected,
)
from rlfleet.rollout.records import WeightGroup, WeightManifest, WeightUpdateResult
from rlfleet.rollout.weight_group import create_group

log = logging.getLogger(__name__)

T = TypeVar("T")

PUSH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, kw_only=True)
class PushConfig:
    transport: Literal["grpc", "distributed"] = "grpc"
    """How weights reach the rollout servers: ``grpc``, the UpdateWeights stream (every
    engine; docs/weight-push.md); ``distributed``, a broadcast in a weight group per server
    (SGLang's NCCL path, ``--engine sglang --sglang-surface http``, or the torch engine's,
    on gloo or NCCL; a server that cannot receive broadcasts stops the run at its start)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """The weight groups' backend (distributed): ``auto`` takes NCCL when the learner is on
    CUDA, else gloo."""
    master_address: str | None = None
    """The address the rollout servers reach the learner's rank 0 at (distributed); None:
    this host's address on the route to each server."""
    timeout_s: float = 120.0
    """Bound on joining a group, on a server's acceptance of a version, and on each tensor's
    broadcast (distributed); a server that misses one takes no prompts until a later push."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Element type of the pushed tensors (both transports); None: the parameters' own.
    It must be the served model's (an SGLang server in bf16 takes ``bfloat16``)."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError("timeout_s: must be > 0")

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return None if self.dtype is None else PUSH_DTYPES[self.dtype]


class BroadcastUnsupported(UsageError):
    """``push.transport = "distributed"`` with a rollout server whose engine cannot receive
    weights by broadcast."""


class BroadcastFailed(RuntimeError):
    """A version's broadcast to one server did not complete; the message says where."""


def resolve_backend(config: PushConfig, device: torch.device) -> Literal["nccl", "gloo"]:
    if config.backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if config.backend == "nccl" and device.type != "cuda":
        raise ValueError("push.backend: nccl needs the learner on CUDA (dist.device)")
    return config.backend


def local_address_towards(target: str) -> str:
    """This host's address on the route to ``target`` (``host:port``): what a server there
    can reach us at. Nothing is sent (a UDP socket is only connected)."""
    host = target.rsplit(":", 1)[0].strip("[]")
    family, *_, addr = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        return str(s.getsockname()[0])


def in_daemon_thread(fn: Callable[[], T]) -> concurrent.futures.Future[T]:
    """Run ``fn`` in a daemon thread: a group whose members never come may hold it until
    its timeout, and must not hold the interpreter's exit (as the default executor does)."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as e:  # (handed to whoever waits for it)
            future.set_exception(e)

    threading.Thread(target=run, name="weight-group", daemon=True).start()
    return future


@dataclass
class _Joined:
    name: str
    group: concurrent.futures.Future[dist.ProcessGroup]
    """Created in a thread: with NCCL it may complete only once the server's ranks first
    take part in a collective (an SGLang that creates its communicator lazily)."""
    store: dist.Store
    """Rank 0's store, served as long as the group lives."""


@dataclass
class _Started:
    call: BroadcastCall
    group: dist.ProcessGroup


class BroadcastPusher:
    """Rank 0's weight groups, one per rollout server (by target), and the push through them;
    the other ranks only join the gather (``drain_gather``)."""

    def __init__(self, config: PushConfig, device: torch.device, call_timeout_s: float) -> None:
        self.config = config
        self.backend = resolve_backend(config, device)
        self.device = device if self.backend == "nccl" else torch.device("cpu")
        """Where broadcast tensors live: the GPU for NCCL, the host for gloo."""
        self.call_timeout_s = call_timeout_s
        """Deadline of a whole BroadcastWeights call (the pool's push timeout)."""
        self.groups: dict[str, _Joined] = {}
        self._names = itertools.count()
        self._run = secrets.token_hex(4)

    @property
    def timeout(self) -> timedelta:
        return timedelta(seconds=self.config.timeout_s)

    async def check(self, clients: Sequence[RolloutClient]) -> None:
        """At the start of a run: ``BroadcastUnsupported`` naming every server that answers
        and cannot receive broadcasts (the others are the pool's to deal with)."""

        async def one(client: RolloutClient) -> str | None:
            try:
                status = await asyncio.wait_for(client.status(), self.config.timeout_s)
            except (grpc.aio.AioRpcError, TimeoutError, ConnectionError, OSError) as e:
                log.debug("%s: no status (%s)", client.target, e)
                return None
            except Exception as e:  # (RolloutUnavailable: the pool reports it)
                log.debug("%s: no status (%s)", client.target, e)
                return None
            if status.broadcast_ranks < 1:
                return f"{client.target} (engine {status.engine})"
            return None

        unable = [u for u in await asyncio.gather(*(one(c) for c in clients)) if u]
        if unable:
            raise BroadcastUnsupported(
                'push.transport = "distributed": rollout server(s) '
                f"{', '.join(unable)} cannot receive weights by broadcast; serve them with "
                '--engine sglang --sglang-surface http, or push with push.transport = "grpc"'
            )

    def forget(self, target: str) -> None:
        """Drop ``target``'s group (broken, or the server lost it): the next push joins anew."""
        self.groups.pop(target, None)

    async def _join(self, client: RolloutClient) -> _Joined:
        timeout_s = self.config.timeout_s
        status = await asyncio.wait_for(client.status(), timeout_s)
        ranks = status.broadcast_ranks
        if ranks < 1:
            raise BroadcastUnsupported(
                f"{client.target}: engine {status.engine} cannot receive weights by broadcast"
            )
        host = self.config.master_address
        if host is None:
            host = await asyncio.to_thread(local_address_towards, client.target)
        world = 1 + ranks
        name = f"rlfleet-weights-{self._run}-{next(self._names)}"
        store = await asyncio.to_thread(
            dist.TCPStore,
            host,
            0,
            world,
            is_master=True,
            timeout=self.timeout,
            wait_for_workers=False,
        )
        device = self.device
        group = in_daemon_thread(
            lambda: create_group(
                store,
                rank=0,
                world_size=world,
                name=name,
                backend=self.backend,
                timeout=self.timeout,
                device=device if self.backend == "nccl" else None,
            )
        )
        spec = WeightGroup(
            master_address=host,
            master_port=store.port,
            group_name=name,
            backend=self.backend,
            world_size=world,
            rank_offset=1,
        )
        # (A join that fails leaves the thread to its timeout; nothing waits for it.)
        await asyncio.wait_for(client.join_weight_group(spec, timeout_s), timeout_s)
        joined = _Joined(name=name, group=group, store=store)
        self.groups[client.target] = joined
        log.info("weight group %s: joined by %s (%d ranks)", name, client.target, ranks)
        return joined

    async def _start(self, client: RolloutClient, manifest: WeightManifest) -> _Started:
        """Join if needed, start the call, and wait for its acceptance and the group."""
        timeout_s = self.config.timeout_s
        for attempt in range(2):
            joined = self.groups.get(client.target) or await self._join(client)
            call = client.broadcast_weights(manifest, joined.name, self.call_timeout_s)
            try:
                await asyncio.wait_for(call.accepted(), timeout_s)
                group = await asyncio.wait_for(asyncio.wrap_future(joined.group), timeout_s)
                return _Started(call=call, group=group)
            except GroupNotJoined:
                # The server lost the group (it restarted): join anew, once.
                call.cancel()
                self.forget(client.target)
                if attempt:
                    raise
            except WeightsRejected:
                call.cancel()  # (refused before any broadcast: the group is intact)
                raise
            except BaseException:
                call.cancel()
                self.forget(client.target)
                raise
        raise AssertionError("unreachable")

    def _broadcast(
        self, stream: Iterator[tuple[str, torch.Tensor]], started: dict[int, _Started]
    ) -> dict[int, Exception]:
        """Broadcast every tensor of ``stream`` in each started group (all of them at once,
        then each waited for, at most ``timeout_s``); a group that fails is left out from
        then on. Runs the stream to its end whatever happens (the gather is collective)."""
        failed: dict[int, Exception] = {}
        for name, tensor in stream:
            works = []
            for i, s in started.items():
                if i in failed:
                    continue
                try:
                    works.append((i, s.group.broadcast(tensor, 0)))
                except Exception as e:
                    failed[i] = BroadcastFailed(f"broadcast of {name}: {e}")
            for i, work in works:
                try:
                    work.wait(self.timeout)
                except Exception as e:
                    failed[i] = BroadcastFailed(f"broadcast of {name}: {e}")
        return failed

    async def push(
        self, clients: Sequence[RolloutClient], model: nn.Module, version: int
    ) -> list[WeightUpdateResult | Exception]:
        """Broadcast the model's full weights as ``version`` to every client's server, each
        its own outcome (as ``export.push_weights_each``). Rank 0 only; the other ranks run
        the gather meanwhile (``export.drain(iter_full_tensors(model))``: the same
        collectives, whatever the transport)."""
        if dist.is_initialized() and dist.get_rank() != 0:
            raise RuntimeError("rank 0 pushes; the other ranks only run the gather")
        dtype = self.config.torch_dtype
        specs = tensor_specs(model, dtype)
        stream = iter_full_tensors(
            model, bucket_bytes=DEFAULT_BUCKET_BYTES, dtype=dtype, device=self.device
        )
        manifest = WeightManifest(version=version, tensors=tuple(specs))
        try:
            starts = await asyncio.gather(
                *(self._start(c, manifest) for c in clients), return_exceptions=True
            )
        except BaseException:
            await asyncio.to_thread(drain, stream)
            raise
        for start in starts:
            if isinstance(start, BaseException) and not isinstance(start, Exception):
                await asyncio.to_thread(drain, stream)
                raise start
        started = {i: s for i, s in enumerate(starts) if isinstance(s, _Started)}
        failed = await asyncio.to_thread(self._broadcast, stream, started)
        outcomes: list[WeightUpdateResult | Exception] = []
        for i, (client, start) in enumerate(zip(clients, starts, strict=True)):
            if isinstance(start, Exception):
                outcomes.append(start)
                continue
            assert isinstance(start, _Started)
            if i in failed:
                start.call.cancel()
                self.forget(client.target)
                outcomes.append(failed[i])
                continue
            try:
                outcomes.append(await start.call.result())
            except Exception as e:
                self.forget(client.target)
                outcomes.append(e)
        return outcomes
