"""The rollout servers of a run, one client each: prompts spread over the servers that serve
the learner's weights, a group re-sent elsewhere when its server fails, weights pushed to all.

A step's groups (each one prompt's ``n`` samples, with its own seed) go out together, one
call per server, so that each engine takes its share in at once: the torch engine then
decodes the same requests in the same batches, and a seeded run repeats to the bit. A group
is taken only whole: if a call fails (the server died, drained, or aborted a sample), the
groups it finished are kept, and each of the others is asked again of another server, with
the same seeds, what it had returned of it dropped. No sample is thus lost or counted
twice, whichever server answers.

A server is *live* while its last weight push succeeded. Pushes go to every endpoint, the
dead included, so a server that comes back (restarted, rescheduled) rejoins at the next push
with the learner's weights; until then no prompt goes to it. ``dns:///name:port`` targets are
resolved again at every push (a headless Service's pods come and go).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

import grpc

from rlfleet.errors import Unavailable
from rlfleet.rollout.client import ClientConfig, RolloutClient
from rlfleet.rollout.records import (
    Completion,
    FinishReason,
    GenerateRequest,
    Prompt,
    WeightUpdateResult,
)

log = logging.getLogger(__name__)


class NoRolloutServer(Unavailable):
    """No rollout server is left to generate on, or none took the learner's weights."""


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    push_timeout_s: float = 300.0
    """Deadline of one weight push to one server; a server that misses it is dead until
    it takes a later push."""
    status_timeout_s: float = 10.0
    """Deadline of the Status call that reads each server's version at the start."""
    max_resends: int = 8
    """Times one group may be re-sent after its server failed, before the run gives up."""

    def __post_init__(self) -> None:
        if self.push_timeout_s <= 0:
            raise ValueError("push_timeout_s: must be > 0")
        if self.status_timeout_s <= 0:
            raise ValueError("status_timeout_s: must be > 0")
        if self.max_resends < 0:
            raise ValueError("max_resends: must be >= 0")


def endpoints(target: str) -> list[str]:
    """``host:port`` | ``ip:port,ip:port`` | ``dns:///name:port`` -> one ``host:port`` per
    server (a name resolved to all its addresses)."""
    target = target.strip()
    if target.startswith("dns:"):
        name = target.split("///", 1)[1] if "///" in target else target[len("dns:") :]
        host, sep, port = name.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"target {target!r}: expected dns:///name:port")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise NoRolloutServer(f"rollout target {target}: cannot resolve {host}: {e}") from e
        seen: dict[str, None] = {}
        for family, *_, addr in infos:
            ip = str(addr[0])
            seen[f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"] = None
        return list(seen)
    out = [a.strip() for a in target.split(",") if a.strip()]
    if not out:
        raise ValueError(f"target {target!r}: no server in it")
    return out


@dataclass
class Server:
    address: str
    client: RolloutClient
    version: int | None = None
    """The version it took last (None: none yet, or it failed since)."""
    busy: int = 0
    """Groups in flight on it."""
    failure: str = ""


@dataclass(frozen=True, kw_only=True)
class Group:
    completions: list[Completion]
    """The group's samples, in sample order."""
    server: str
    resent: int
    """Times the group was asked again after a server failed."""


@dataclass(frozen=True, kw_only=True)
class PushReport:
    version: int
    served: list[str]
    """Servers that serve ``version`` now."""
    failed: dict[str, str] = field(default_factory=dict)
    """Servers that did not take it, and why."""
    bytes: int = 0
    """Bytes sent to each server."""


def _failure(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return f"{type(e).__name__}: {e}"


class RolloutPool:
    """Use as ``async with RolloutPool(target) as pool:``."""

    def __init__(
        self,
        target: str,
        config: PoolConfig = PoolConfig(),
        client_config: ClientConfig | None = None,
    ) -> None:
        self.target = target
        self.config = config
        client_config = client_config or ClientConfig()
        # One attempt per call: a failure marks the server dead and the pool retries elsewhere.
        self.client_config = ClientConfig(
            attempts=1,
            max_message_mb=client_config.max_message_mb,
            tls_ca=client_config.tls_ca,
            timeout_s=config.push_timeout_s,
        )
        self.servers: dict[str, Server] = {}
        self._turn = itertools.count()
        self.resolve()

    async def __aenter__(self) -> RolloutPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.gather(*(s.client.close() for s in self.servers.values()))

    def resolve(self) -> None:
        """Add the target's servers not known yet (names resolved again)."""
        for address in endpoints(self.target):
            if address not in self.servers:
                self.servers[address] = Server(address, RolloutClient(address, self.client_config))

    @property
    def clients(self) -> list[RolloutClient]:
        return [s.client for s in self.servers.values()]

    def live(self, version: int) -> list[Server]:
        return [s for s in self.servers.values() if s.version is not None and s.version >= version]

    async def versions(self, servers: Sequence[Server] | None = None) -> dict[str, int | None]:
        """Each server's serving version (None: it did not answer in time), of ``servers``
        (None: all)."""

        async def one(server: Server) -> int | None:
            try:
                status = await asyncio.wait_for(
                    server.client.status(), self.config.status_timeout_s
                )
            except (grpc.aio.AioRpcError, Unavailable, TimeoutError) as e:
                server.failure = _failure(e)
                return None
            return status.version

        chosen = list(self.servers.values()) if servers is None else list(servers)
        found = await asyncio.gather(*(one(s) for s in chosen))
        return {s.address: v for s, v in zip(chosen, found, strict=True)}

    def adopt(self, versions: dict[str, int | None], version: int) -> None:
        """Take the servers that serve exactly ``version`` as live on it (a fresh run whose
        servers loaded the same model)."""
        for address, served in versions.items():
            if served == version:
                self.servers[address].version = served

    async def push(
        self,
        version: int,
        push_one: Callable[
            [Sequence[RolloutClient]], Awaitable[Sequence[WeightUpdateResult | Exception]]
        ],
    ) -> PushReport:
        """Push ``version`` to every server through ``push_one(clients)`` (the learner's
        gather-and-send); returns who took it. ``NoRolloutServer`` if none did."""
        with_names = False
        try:
            self.resolve()
        except NoRolloutServer as e:
            log.warning("%s", e)  # (the known servers are pushed to)
            with_names = True
        servers = list(self.servers.values())
        was_live = {s.address for s in servers if s.version is not None}
        # A server that failed is pushed to again only once it answers a Status call: one
        # that hangs would otherwise hold every push for push_timeout_s.
        answers = await self.versions([s for s in servers if s.address not in was_live])
        targets = [
            s for s in servers if s.address in was_live or answers.get(s.address) is not None
        ]
        failed = {s.address: s.failure for s in servers if s not in targets}
        served: list[str] = []
        sent = 0
        results = await push_one([s.client for s in targets]) if targets else []
        for server, result in zip(targets, results, strict=True):
            if isinstance(result, WeightUpdateResult) and result.version == version:
                server.version, server.failure = version, ""
                served.append(server.address)
                sent = result.bytes
            else:
                server.version = None
                server.failure = (
                    _failure(result)
                    if isinstance(result, BaseException)
                    else f"serves {getattr(result, 'version', None)}, not {version}"
                )
                failed[server.address] = server.failure
        if not served:
            why = "; ".join(f"{a}: {f}" for a, f in failed.items())
            hint = " (and the target could not be resolved)" if with_names else ""
            raise NoRolloutServer(f"no rollout server took weights version {version}{hint}: {why}")
        for address, why in failed.items():
            # (Said once, when a server drops out; it is tried again at every push.)
            level = logging.WARNING if address in was_live else logging.DEBUG
            log.log(level, "rollout server %s did not take version %d: %s", address, version, why)
        for address in served:
            if address not in was_live and was_live:
                log.warning("rollout server %s is back, on version %d", address, version)
        return PushReport(version=version, served=served, failed=failed, bytes=sent)

    def _pick(self, version: int, avoid: set[str]) -> Server | None:
        live = [s for s in self.live(version) if s.address not in avoid] or self.live(version)
        if not live:
            return None
        turn = next(self._turn) % len(live)
        # Fewest groups in flight first; ties taken in turn, so servers share the work.
        return min(live[turn:] + live[:turn], key=lambda s: s.busy)

    async def generate(self, request: GenerateRequest, version: int) -> Group:
        """One prompt's group (``generate_groups`` of it alone)."""
        async with contextlib.aclosing(self.generate_groups([request], version)) as groups:
            async for _, group in groups:
                return group
        raise AssertionError("generate_groups ended without the group")  # (it cannot)

    async def generate_groups(
        self, requests: Sequence[GenerateRequest], version: int
    ) -> AsyncGenerator[tuple[int, Group], None]:
        """Each request's group (one prompt each) from servers serving ``version`` or
        newer, yielded whole as soon as it is, with its index in ``requests``.

        The requests go out together: one call per live server, the groups dealt to the
        servers in turn, so that each engine takes its share in one go (the torch engine
        then decodes the same requests in the same batches, run after run). When a call
        fails, the groups it did not finish are sent again, together, to another server
        (each at most ``config.max_resends`` times); the ones it finished are kept."""
        out: asyncio.Queue[tuple[int, Group] | BaseException] = asyncio.Queue()

        async def part(indices: list[int], server: Server, failed: set[str], resent: int) -> None:
            try:
                while True:
                    left = await self._call(server, requests, indices, resent, out)
                    if not left:
                        return
                    failed.add(server.address)
                    resent += 1
                    if resent > self.config.max_resends:
                        ids = ", ".join(requests[i].prompts[0].id for i in left)
                        raise NoRolloutServer(
                            f"groups {ids}: failed on {resent} servers in turn; last: "
                            f"{server.address}: {server.failure}"
                        )
                    picked = self._pick(version, failed)
                    if picked is None:
                        raise NoRolloutServer(self._none_left(version))
                    server, indices = picked, left
            except Exception as e:  # (handed to the caller, which raises it)
                out.put_nowait(e)

        live = self.live(version)
        if not live:
            raise NoRolloutServer(self._none_left(version))
        turn = next(self._turn) % len(live)
        live = live[turn:] + live[:turn]
        shares = [list(range(k, len(requests), len(live))) for k in range(len(live))]
        tasks = [
            asyncio.create_task(part(share, server, set(), 0))
            for share, server in zip(shares, live, strict=True)
            if share
        ]
        try:
            for _ in range(len(requests)):
                item = await out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _call(
        self,
        server: Server,
        requests: Sequence[GenerateRequest],
        indices: list[int],
        resent: int,
        out: asyncio.Queue[tuple[int, Group] | BaseException],
    ) -> list[int]:
        """One call to ``server`` for the groups ``indices``; each group whole is put on
        ``out``. Returns the indices of the groups it did not finish (the server is then
        marked failed)."""
        call = _merge([requests[i] for i in indices])
        index_of = {p.id: i for p, i in zip(call.prompts, indices, strict=True)}
        got: dict[str, dict[int, Completion]] = {p.id: {} for p in call.prompts}
        done: set[str] = set()
        server.busy += len(indices)
        started = time.monotonic()
        try:
            async with contextlib.aclosing(server.client.generate(call)) as stream:
                async for c in stream:
                    if c.finish_reason is FinishReason.ABORT:
                        server.version, server.failure = None, f"aborted a sample of {c.prompt_id}"
                        break
                    members = got[c.prompt_id]
                    members[c.sample] = c
                    i = index_of[c.prompt_id]
                    (prompt,) = requests[i].prompts
                    if sorted(members) == list(range(prompt.n)):
                        done.add(c.prompt_id)
                        samples = [members[k] for k in range(prompt.n)]
                        if c.prompt_id != prompt.id:  # (renamed to be unique in the call)
                            samples = [replace(s, prompt_id=prompt.id) for s in samples]
                        group = Group(completions=samples, server=server.address, resent=resent)
                        out.put_nowait((i, group))
        except (grpc.aio.AioRpcError, Unavailable) as e:
            # (RequestRejected is the request's fault, not the server's: it propagates.)
            server.version, server.failure = None, _failure(e)
        finally:
            server.busy -= len(indices)
        left = [index_of[p.id] for p in call.prompts if p.id not in done]
        if left:
            if server.version is not None:
                server.version, server.failure = None, "the call ended with groups unfinished"
            log.warning(
                "rollout server %s failed after %.1f s (%s); %d groups re-sent",
                server.address,
                time.monotonic() - started,
                server.failure,
                len(left),
            )
        return left

    def _none_left(self, version: int) -> str:
        why = "; ".join(
            f"{s.address}: {s.failure or 'not on this version'}" for s in self.servers.values()
        )
        return f"no rollout server serves version {version} or newer ({why})"


def _merge(requests: Sequence[GenerateRequest]) -> GenerateRequest:
    """One call for several one-prompt requests that differ only in their seeds: each
    prompt keeps its request's seed; prompt ids made unique within the call (``#k``)."""
    first = requests[0].sampling
    sampling = replace(first, seed=None)
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for r in requests:
        (prompt,) = r.prompts
        if replace(r.sampling, seed=None) != sampling:
            raise ValueError("requests sent together must share their sampling (seeds aside)")
        pid, k = prompt.id, 1
        while pid in seen:
            pid, k = f"{prompt.id}#{k}", k + 1
        seen.add(pid)
        seed = r.sampling.seed if prompt.seed is None else prompt.seed
        prompts.append(replace(prompt, id=pid, seed=seed))
    if len(requests) == 1:
        return requests[0]
    return GenerateRequest(prompts=tuple(prompts), sampling=sampling)
