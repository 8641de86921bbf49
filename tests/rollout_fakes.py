"""Shared by the rollout service tests: a deterministic fake engine that honours the
``Engine`` protocol, a fake verifier, an in-process server on a free loopback port, and
request builders. (No tests here.)"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from rlfleet.grpc_server import ServerConfig
from rlfleet.rollout.engine import WeightMismatch, WeightUpdate
from rlfleet.rollout.records import (
    DType,
    EngineStatus,
    FinishReason,
    SampleRequest,
    TensorSpec,
    TokenChunk,
    WeightManifest,
)
from rlfleet.rollout.scoring import Verifier
from rlfleet.rollout.servicer import ServiceConfig, build_rollout_server
from rlfleet.rollout.weights import read_safetensors_header, read_tensor_bytes
from rlfleet.sandbox.records import Case, CaseResult, CodeCase, MathCase, StdioTest, Verdict
from rlfleet.v1 import rollout_pb2 as pb
from rlfleet.v1 import rollout_pb2_grpc as pb_grpc
from rlfleet.v1 import verifier_pb2 as vpb

EOS = 0
LETTERS = range(ord("a"), ord("z") + 1)

PARAMS = (
    TensorSpec(name="model.embed_tokens.weight", dtype=DType.FLOAT32, shape=(32, 8)),
    TensorSpec(name="model.layers.0.mlp.up_proj.weight", dtype=DType.BFLOAT16, shape=(16, 8)),
    TensorSpec(name="model.norm.weight", dtype=DType.FLOAT32, shape=(8,)),
)
"""The fake model's parameter table (``check_manifest`` compares against it)."""


class ByteTokenizer:
    """One token per byte; id 0 is end-of-sequence."""

    @property
    def eos_token_id(self) -> int | None:
        return EOS

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, token_ids: Any) -> str:
        return bytes(t for t in token_ids if t != EOS).decode(errors="replace")


def sample_text(prompt_token_ids: tuple[int, ...], seed: int, length: int) -> str:
    """The letters the fake engine generates for a sample (a pure function of its inputs)."""
    rng = random.Random(f"{seed}:{bytes(prompt_token_ids)!r}")
    return "".join(chr(rng.choice(LETTERS)) for _ in range(length))


class FakeEngine:
    """Generates ``sample_text`` one letter per step, ``step_s`` apart, all sequences in
    lock-step; a sample ends with STOP after ``length(request)`` letters (default: never, so
    LENGTH at ``max_new_tokens``), or at a stop token id. Weight updates are applied between
    steps, all or nothing, by reading the spooled safetensors file; later tokens carry the
    new version. Records every request, every cancellation, every applied update."""

    def __init__(
        self,
        *,
        step_s: float = 0.002,
        length: Callable[[SampleRequest], int | None] = lambda r: None,
        gates: dict[str, asyncio.Event] | None = None,
        apply_fail: Exception | None = None,
        apply_s: float = 0.0,
        scripts: dict[str, str] | None = None,
    ) -> None:
        self.step_s = step_s
        self.scripts = scripts or {}
        """Prompt id -> the exact text its samples generate (then STOP)."""
        self.length = length
        self.gates = gates or {}
        """Prompt id -> event: that prompt's samples wait for it before their last token."""
        self.apply_fail = apply_fail
        self.apply_s = apply_s
        self.version = 0
        self.weights = {t.name: bytes(t.nbytes) for t in PARAMS}
        self.started: list[SampleRequest] = []
        self.together: list[list[str]] = []
        """Keys of each ``generate_many`` call's requests."""
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.updates: list[WeightManifest] = []
        self.running = 0
        self._steps = asyncio.Lock()  # held by a decode step, and by an update in between
        self.closed = False

    @property
    def tokenizer(self) -> ByteTokenizer:
        return ByteTokenizer()

    def generate_many(
        self, requests: Sequence[SampleRequest]
    ) -> Sequence[AsyncIterator[TokenChunk]]:
        self.together.append([r.key for r in requests])
        return [self.generate(r) for r in requests]

    async def generate(self, request: SampleRequest) -> AsyncIterator[TokenChunk]:
        assert request.sampling.seed is not None, "the service gives every sample a seed"
        self.started.append(request)
        self.running += 1
        prompt_id = request.key.split("/")[1]
        stop_after = self.length(request)
        budget = request.sampling.max_new_tokens
        text = sample_text(request.prompt_token_ids, request.sampling.seed, budget)
        if prompt_id in self.scripts:
            text = self.scripts[prompt_id][:budget]
            stop_after = len(self.scripts[prompt_id])
        try:
            for i, letter in enumerate(text):
                last = i + 1 == budget or (stop_after is not None and i + 1 == stop_after)
                if last and prompt_id in self.gates:
                    await self.gates[prompt_id].wait()
                async with self._steps:
                    await asyncio.sleep(self.step_s)
                    version = self.version
                token = ord(letter)
                reason = None
                if token in request.sampling.stop_token_ids or (stop_after == i + 1):
                    reason = FinishReason.STOP
                elif last:
                    reason = FinishReason.LENGTH
                if reason is not None:
                    # (A consumer may close the iterator after the last chunk: not a cancel.)
                    self.finished.append(request.key)
                yield TokenChunk(
                    token_ids=(token,),
                    logprobs=(-0.01 * (i + 1),),
                    version=version,
                    finish_reason=reason,
                )
                if reason is not None:
                    return
        except (GeneratorExit, asyncio.CancelledError):
            if request.key not in self.finished:
                self.cancelled.append(request.key)
            raise
        finally:
            self.running -= 1

    def check_manifest(self, manifest: WeightManifest) -> None:
        table = {t.name: t for t in PARAMS}
        for t in manifest.tensors:
            have = table.get(t.name)
            if have is None:
                raise WeightMismatch(f"{t.name}: not a parameter of this model")
            if have.shape != t.shape:
                raise WeightMismatch(f"{t.name}: shape {t.shape}, the model's is {have.shape}")
            if have.dtype is not t.dtype:
                raise WeightMismatch(f"{t.name}: dtype {t.dtype}, the model's is {have.dtype}")

    async def update_weights(self, update: WeightUpdate) -> None:
        self.check_manifest(update.manifest)
        stored = read_safetensors_header(update.path)
        assert [s.spec for s in stored] == list(update.manifest.tensors)
        new = {s.spec.name: read_tensor_bytes(s) for s in stored}
        async with self._steps:  # between two decode steps
            await asyncio.sleep(self.apply_s)
            if self.apply_fail is not None:
                raise self.apply_fail
            self.weights.update(new)
            self.version = update.manifest.version
            self.updates.append(update.manifest)

    def status(self) -> EngineStatus:
        return EngineStatus(
            engine="fake",
            model="fake-model",
            version=self.version,
            running=self.running,
            queued=0,
            device="cpu",
        )

    async def close(self) -> None:
        self.closed = True


class FakeVerifier:
    """Math: AC when the gold answer occurs in the completion. Code: AC when it was given
    any code. Can be slow, hang, or fail; records cases and cancellations."""

    def __init__(
        self, *, delay: float = 0.0, fail: BaseException | None = None, hang: bool = False
    ) -> None:
        self.delay = delay
        self.fail = fail
        self.hang = hang
        self.seen: list[Case] = []
        self.cancelled: list[str] = []

    async def verify(self, case: Case) -> CaseResult:
        self.seen.append(case)
        try:
            await asyncio.sleep(self.delay)
            if self.hang:
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(case.id)
            raise
        if self.fail is not None:
            raise self.fail
        if isinstance(case, MathCase):
            ok = case.gold in case.completion
            return CaseResult(
                id=case.id,
                verdict=Verdict.AC if ok else Verdict.WA,
                passed=int(ok),
                total=1,
                reward=float(ok),
                extracted=case.gold if ok else "",
            )
        assert isinstance(case, CodeCase)
        ok = bool(case.code)
        return CaseResult(
            id=case.id,
            verdict=Verdict.AC if ok else Verdict.WA,
            passed=len(case.tests) if ok else 0,
            total=len(case.tests),
            reward=float(ok),
        )


class Running:
    """``async with Running(engine, verifier) as s``: a started rollout server on a free
    loopback port; ``s.stub`` talks to it."""

    def __init__(
        self,
        engine: Any,
        verifier: Verifier | None = None,
        *,
        spool_dir: Path | None = None,
        **service: Any,
    ) -> None:
        self.engine = engine
        self.registry = CollectorRegistry()
        self.srv, self.service = build_rollout_server(
            ServerConfig(port=0),
            ServiceConfig(spool_dir=spool_dir, **service),
            engine,
            verifier,
            self.registry,
        )
        self.target = f"127.0.0.1:{self.srv.port}"

    async def __aenter__(self) -> Running:
        await self.srv.start()
        self.channel = grpc.aio.insecure_channel(self.target)
        self.stub = pb_grpc.RolloutStub(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()
        await self.srv.server.stop(0)

    async def health(self, service: str = "rlfleet.v1.Rollout") -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return int(reply.status)

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


def math_prompt(prompt_id: str, text: str = "2+2=", gold: str = "a", n: int = 1) -> pb.Prompt:
    return pb.Prompt(
        id=prompt_id, text=text, n=n, verification=pb.Verification(math=vpb.MathCase(gold=gold))
    )


def code_prompt(prompt_id: str, text: str = "write", n: int = 1) -> pb.Prompt:
    return pb.Prompt(
        id=prompt_id,
        text=text,
        n=n,
        verification=pb.Verification(
            code=vpb.CodeCase(
                language="python",
                problem=vpb.Problem(stdio_tests=[vpb.StdioTest(stdin="1", stdout="1")] * 2),
            )
        ),
    )


def generate_request(
    *prompts: pb.Prompt, max_new_tokens: int = 8, seed: int | None = None, **sampling: Any
) -> pb.GenerateRequest:
    params = pb.SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, **sampling)
    if seed is not None:
        params.seed = seed
    return pb.GenerateRequest(prompts=prompts, sampling=params)


def code_case_spec() -> CodeCase:
    return CodeCase(
        id="spec", language="python", code="", tests=(StdioTest(stdin="1", stdout="1"),)
    )


async def until(predicate: Callable[[], bool], what: str, tries: int = 1000) -> None:
    """Wait (bounded) for something the server does asynchronously."""
    for _ in range(tries):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")
