"""SGLang's gRPC scheduler API (``sglang.grpc.scheduler.SglangScheduler``) through the
generated client that ``smg-grpc-proto`` publishes: token ids in, streamed token ids and
output logprobs out, Abort, HealthCheck, GetLoads, FlushCache.

The pinned SGLang serves this service in its model-gateway mode (``--smg-grpc-mode``, the
smg-grpc-servicer package) in place of its HTTP server; see docs/sglang.md for what that
mode does and does not offer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import grpc
from smg_grpc_proto.generated import common_pb2, sglang_scheduler_pb2, sglang_scheduler_pb2_grpc

from rlfleet.rollout.engine import EngineError
from rlfleet.rollout.records import FinishReason, SamplingParams

FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "abort": FinishReason.ABORT,
}
"""GenerateComplete.finish_reason (OpenAI-style strings) to ours."""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class SglangGrpcError(EngineError):
    """A scheduler call failed; the message has the method, the status and SGLang's text."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"SGLang {method}: {code.name}: {details}")
        self.method = method
        self.code = code


@dataclass(frozen=True, kw_only=True)
class Piece:
    """What one GenerateResponse adds to a sequence."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishReason | None = None


def sampling_params_pb(params: SamplingParams) -> sglang_scheduler_pb2.SamplingParams:
    """Every field set explicitly: proto3 zeros are not SGLang's defaults (the proto says
    so); the servicer reads top_p 0 and top_k 0 as "off", but n 0 would ask for no sample."""
    return sglang_scheduler_pb2.SamplingParams(
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1,
        min_p=0.0,
        repetition_penalty=1.0,
        max_new_tokens=params.max_new_tokens,
        stop=list(params.stop),
        stop_token_ids=list(params.stop_token_ids),
        skip_special_tokens=True,
        spaces_between_special_tokens=True,
        n=1,
    )


def generate_request_pb(
    rid: str, prompt_token_ids: tuple[int, ...], params: SamplingParams
) -> sglang_scheduler_pb2.GenerateRequest:
    return sglang_scheduler_pb2.GenerateRequest(
        request_id=rid,
        tokenized=sglang_scheduler_pb2.TokenizedInput(input_ids=list(prompt_token_ids)),
        sampling_params=sampling_params_pb(params),
        return_logprob=True,
        # Output logprobs only (SGLang's -1: none for the prompt).
        logprob_start_len=-1,
        stream=True,
    )


def _piece(logprobs: sglang_scheduler_pb2.OutputLogProbs, token_ids: list[int]) -> Piece:
    values = tuple(float(v) for v in logprobs.token_logprobs)
    if len(values) != len(token_ids) or list(logprobs.token_ids) != list(token_ids):
        raise EngineError(
            f"SGLang Generate: {len(token_ids)} tokens came with {len(values)} logprobs "
            "for other token ids"
        )
    return Piece(token_ids=tuple(token_ids), logprobs=values)


class SchedulerClient:
    """One channel to the scheduler service."""

    def __init__(self, target: str, *, timeout_s: float) -> None:
        self.target = target
        self.timeout_s = timeout_s
        """Bound on unary calls and on the wait for each streamed message."""
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = sglang_scheduler_pb2_grpc.SglangSchedulerStub(self._channel)

    async def generate(
        self, rid: str, prompt_token_ids: tuple[int, ...], params: SamplingParams
    ) -> AsyncGenerator[Piece, None]:
        """Stream one sequence. SGLang's stream: a chunk per decode step with the new token
        ids and their logprobs, then a GenerateComplete with the finish reason, whose
        output_ids and logprobs in streaming mode repeat only the last chunk's (the
        servicer builds both from the same output): the tokens come from the chunks alone.
        The last piece carries the finish reason and no tokens. Closing the iterator early
        sends Abort and cancels the call."""
        call = self._stub.Generate(generate_request_pb(rid, prompt_token_ids, params))
        finished = False
        try:
            while True:
                try:
                    resp = await asyncio.wait_for(call.read(), self.timeout_s)
                except grpc.aio.AioRpcError as err:
                    raise SglangGrpcError("Generate", err.code(), err.details() or "") from None
                except TimeoutError:
                    raise EngineError(
                        f"SGLang Generate: no message within {self.timeout_s:g} s"
                    ) from None
                if resp is grpc.aio.EOF:
                    raise EngineError("SGLang Generate: stream ended without GenerateComplete")
                kind = resp.WhichOneof("response")
                if kind == "chunk":
                    yield _piece(resp.chunk.output_logprobs, list(resp.chunk.token_ids))
                elif kind == "complete":
                    reason = FINISH_REASONS.get(resp.complete.finish_reason)
                    if reason is None:
                        raise EngineError(
                            "SGLang Generate: unknown finish reason "
                            f"{resp.complete.finish_reason!r}"
                        )
                    finished = True
                    yield Piece(token_ids=(), logprobs=(), finish_reason=reason)
                    return
        finally:
            if not finished:
                await self._abort_quietly(rid)
            call.cancel()

    async def _abort_quietly(self, rid: str) -> None:
        # The call's cancellation alone also aborts the request in the servicer; the
        # explicit Abort frees the scheduler's slot without waiting for that path.
        with contextlib.suppress(SglangGrpcError, EngineError):
            await self.abort(rid)

    async def abort(self, rid: str) -> bool:
        try:
            resp = await self._stub.Abort(
                sglang_scheduler_pb2.AbortRequest(request_id=rid, reason="cancelled"),
                timeout=self.timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            raise SglangGrpcError("Abort", err.code(), err.details() or "") from None
        return bool(resp.success)

    async def healthy(self, timeout_s: float) -> bool:
        try:
            resp = await self._stub.HealthCheck(
                sglang_scheduler_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.healthy)

    async def loads(self) -> tuple[int, int]:
        """(running, waiting) requests summed over the data-parallel ranks."""
        try:
            resp = await self._stub.GetLoads(
                sglang_scheduler_pb2.GetLoadsRequest(include=["core"]), timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as err:
            raise SglangGrpcError("GetLoads", err.code(), err.details() or "") from None
        return resp.aggregate.total_running_reqs, resp.aggregate.total_waiting_reqs

    async def flush_cache(self, timeout_s: float = 0.0) -> None:
        try:
            resp = await self._stub.FlushCache(
                common_pb2.FlushCacheRequest(timeout_s=timeout_s), timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as err:
            raise SglangGrpcError("FlushCache", err.code(), err.details() or "") from None
        if not resp.success:
            raise EngineError(f"SGLang FlushCache: {resp.message}")

    async def close(self) -> None:
        await self._channel.close()
