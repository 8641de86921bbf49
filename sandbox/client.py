"""Client of the verifier service, for the rollout and learner side.

Spreads calls over several servers with gRPC's own ``round_robin`` (a ``dns:///`` name that
resolves to many addresses, or a comma-separated list of ``ip:port``), retries what is not
the program's fault (SE results, UNAVAILABLE, RESOURCE_EXHAUSTED) with backoff, so a retry
lands on another server, and sends large test suites once: code cases with many tests are
registered by content hash and referenced afterwards (re-registered transparently when a
server has dropped or never seen them).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

from rlfleet.sandbox.convert import (
    case_to_request,
    problem_from_case,
    problem_ref,
    response_to_result,
)
from rlfleet.sandbox.records import Case, CaseResult, CodeCase, Verdict
from rlfleet.v1 import verifier_pb2 as pb
from rlfleet.v1 import verifier_pb2_grpc as pb_grpc

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    attempts: int = 4
    """Tries per case (SE results and transient errors are retried)."""
    backoff_s: float = 0.05
    """First retry delay; doubles each time, with jitter."""
    register_min_tests: int = 8
    """Code cases with at least this many tests send them by reference (inline once per
    server)."""
    max_message_mb: int = 64
    tls_ca: Path | None = None
    """PEM roots to verify the server with; enables TLS."""
    timeout_s: float | None = None
    """Deadline per call."""


def channel_target(target: str) -> str:
    """``host:port`` / ``dns:///name:port`` / ``ip:port,ip:port`` -> a gRPC target."""
    target = target.strip()
    if "," in target and ":///" not in target and not target.startswith("ipv"):
        return "ipv4:" + target
    return target


class VerifierClient:
    def __init__(self, target: str, config: ClientConfig = ClientConfig()) -> None:
        self.config = config
        size = config.max_message_mb << 20
        options = [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
        ]
        if config.tls_ca is not None:
            creds = grpc.ssl_channel_credentials(config.tls_ca.read_bytes())
            self._channel = grpc.aio.secure_channel(channel_target(target), creds, options)
        else:
            self._channel = grpc.aio.insecure_channel(channel_target(target), options)
        self._stub = pb_grpc.VerifierStub(self._channel)

    async def __aenter__(self) -> VerifierClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def _request(self, case: Case, inline: bool = False) -> pb.VerifyRequest:
        """Large suites go by reference (the hash is computed here, as the server does);
        a server that does not hold the suite answers NOT_FOUND, gets it inline once, and
        keeps it for the next samples of the same problem."""
        big = isinstance(case, CodeCase) and len(case.tests) >= self.config.register_min_tests
        if big and not inline:
            assert isinstance(case, CodeCase)
            return case_to_request(case, problem_ref(problem_from_case(case)))
        return case_to_request(case)

    async def verify(self, case: Case) -> CaseResult:
        """One case; retried on SE and transient errors. Invalid input raises ValueError."""
        delay = self.config.backoff_s
        inline = False
        last: CaseResult | None = None
        for attempt in range(self.config.attempts + 1):
            if attempt and last is not None:
                await asyncio.sleep(delay * (1 + random.random()))
                delay *= 2
            try:
                request = self._request(case, inline)
                reply = await self._stub.Verify(request, timeout=self.config.timeout_s)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND and not inline:
                    # A server lacks the suite: register it (on the next server) and send it
                    # inline from now on (kept where it lands). Round robin thus spreads the
                    # suite to the servers that miss it within a few calls.
                    inline = True
                    if isinstance(case, CodeCase):
                        await self._stub.RegisterProblem(
                            problem_from_case(case), timeout=self.config.timeout_s
                        )
                    continue
                if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise ValueError(e.details()) from None
                if e.code() in RETRYABLE and attempt < self.config.attempts:
                    continue
                raise
            last = response_to_result(reply)
            if last.verdict is not Verdict.SE:
                return last
        if last is None:
            raise RuntimeError(f"case {case.id!r}: no answer after {self.config.attempts} tries")
        return last

    async def verify_many(self, cases: Iterable[Case]) -> AsyncIterator[CaseResult]:
        """Stream cases; results come back as they finish (any order). SE results and
        per-item refusals that are transient are retried through ``verify``."""
        by_id: dict[str, Case] = {}

        async def requests() -> AsyncIterator[pb.VerifyRequest]:
            for case in cases:
                by_id[case.id] = case
                yield self._request(case)

        retry: list[Case] = []
        async for reply in self._stub.VerifyStream(requests()):
            if reply.error:
                case = by_id.get(reply.id)
                if reply.error_code in ("NOT_FOUND", "RESOURCE_EXHAUSTED") and case is not None:
                    retry.append(case)
                    continue
                raise ValueError(f"case {reply.id!r}: {reply.error}")
            result = response_to_result(reply)
            if result.verdict is Verdict.SE and result.id in by_id:
                retry.append(by_id[result.id])
                continue
            yield result
        for case in retry:
            yield await self.verify(case)
