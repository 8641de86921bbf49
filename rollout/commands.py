"""The rollout service's commands as typed calls (``rlfleet/cli.py`` parses the flags).

Expected failures are ``CommandError``s with one sentence (docs/cli.md): ``UsageError``
(exit 2) for what the user asked wrongly, plain ``CommandError`` (exit 1) for what the
machine could not do.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TextIO

import grpc

from rlfleet.errors import EXIT_OK, EXIT_USAGE, CommandError, Unavailable, UsageError
from rlfleet.grpc_server import ServerConfig
from rlfleet.rollout.engine import Engine, EngineError
from rlfleet.rollout.records import Completion, GenerateRequest, Prompt, SamplingParams
from rlfleet.rollout.servicer import ServiceConfig
from rlfleet.sandbox.cases import CaseError, parse_case

if TYPE_CHECKING:
    from rlfleet.rollout.model_init import Preset

EngineKind = Literal["torch", "sglang"]


# -- rlfleet serve rollout -------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RolloutEngineConfig:
    kind: EngineKind = "torch"
    """The built-in torch engine, or SGLang as a subprocess."""
    model: Path
    """Hugging Face model directory (config, tokenizer, ``*.safetensors``)."""
    device: Literal["cpu", "cuda"] = "cpu"
    """torch engine: ``cpu`` or ``cuda`` (the first visible GPU; CUDA_VISIBLE_DEVICES picks)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights and compute type."""
    sglang_surface: Literal["grpc", "http"] = "grpc"
    """sglang engine: SGLang's gRPC scheduler API, or its HTTP server (the pinned SGLang takes
    weight updates over HTTP only: docs/sglang.md)."""
    compile: bool = False
    """torch engine: compile its decode step when it starts (``TorchEngineConfig.compile``:
    faster steps for a longer start)."""
    threads: int | None = None
    """torch engine: intra-op CPU threads of its decode loop (``TorchEngineConfig.threads``);
    None: torch's default (one per core)."""

    def __post_init__(self) -> None:
        if self.compile and self.kind != "torch":
            raise ValueError("--compile: an option of the torch engine only")
        if self.threads is not None and self.kind != "torch":
            raise ValueError("--threads: an option of the torch engine only")
        if self.threads is not None and self.threads < 1:
            raise ValueError("--threads: must be >= 1")


@dataclass(frozen=True, kw_only=True)
class ServeRolloutConfig:
    """``rlfleet serve rollout``: the gRPC server, the service on it, its engine, and the
    verifier fleet that scores its completions."""

    server: ServerConfig = field(default_factory=lambda: ServerConfig(port=50052))
    """Address, TLS, message size, drain time, metrics port."""
    service: ServiceConfig = field(default_factory=ServiceConfig)
    """Scoring timeout, per-call limits, where weight updates are spooled."""
    engine: RolloutEngineConfig
    """What generates."""
    verifier: str | None = None
    """Verifier fleet (``VerifierClient`` targets: ``host:port``, ``dns:///name:port``, a
    comma list of ``ip:port``). None: completions are returned unscored, with the reason
    "no verifier configured"."""


async def start_engine(config: RolloutEngineConfig) -> Engine:
    """Start the configured engine; what a user can fix becomes a ``CommandError``."""
    try:
        if config.kind == "torch":
            from transformers.utils import logging as hf_logging

            from rlfleet.rollout.torch_engine import TorchEngine, TorchEngineConfig

            # A server's stderr is for its own lines (docs/cli.md), not a loading bar.
            hf_logging.disable_progress_bar()

            # Loading the model blocks: off the event loop.
            return await asyncio.to_thread(
                TorchEngine,
                TorchEngineConfig(
                    model=config.model,
                    device=config.device,
                    dtype=config.dtype,
                    compile=config.compile,
                    threads=config.threads,
                ),
            )
        from rlfleet.rollout.sglang_engine import SglangEngine, SglangEngineConfig

        return await SglangEngine.start(
            SglangEngineConfig(
                model_dir=config.model,
                surface=config.sglang_surface,
                extra_args=("--dtype", config.dtype),
            )
        )
    except ModuleNotFoundError as e:
        raise CommandError(
            f"the {config.kind} engine cannot be imported ({e}): install rlfleet[rollout]"
            + (" and rlfleet[sglang]" if config.kind == "sglang" else "")
        ) from e
    except (EngineError, OSError, ValueError) as e:
        raise CommandError(f"the {config.kind} engine cannot start on {config.model}: {e}") from e


def _verifier_client(target: str | None) -> Any:
    if target is None:
        return None
    from rlfleet.sandbox.client import VerifierClient

    try:
        return VerifierClient(target)
    except ValueError as e:
        raise UsageError(f"--verifier: {e}") from e


async def serve_rollout(
    config: ServeRolloutConfig,
    start: Callable[[RolloutEngineConfig], Awaitable[Engine]] = start_engine,
    announce: Callable[[str], None] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (or cancellation), then drain calls in flight and stop
    the engine. ``start`` builds the engine (tests pass a fake)."""
    from prometheus_client import CollectorRegistry

    from rlfleet.grpc_server import run_until_signalled
    from rlfleet.rollout.servicer import build_rollout_server
    from rlfleet.sandbox.commands import _check_port_free, _check_tls

    server = config.server
    if not config.engine.model.is_dir():
        raise UsageError(f"--model {config.engine.model}: no such directory")
    _check_tls(server.tls_cert, server.tls_key)
    verifier = _verifier_client(config.verifier)
    _check_port_free(server.host, server.port, "--port")
    if server.metrics_port is not None:
        _check_port_free(server.host, server.metrics_port, "--metrics-port")
    registry = CollectorRegistry()
    engine = await start(config.engine)
    try:
        try:
            srv, _ = build_rollout_server(server, config.service, engine, verifier, registry)
        except (OSError, RuntimeError) as e:  # taken since the check above
            raise CommandError(f"cannot listen on {server.host}:{server.port}: {e}") from e
        await run_until_signalled(srv, server, registry, announce or _announce)
    finally:
        await engine.close()
        if verifier is not None:
            await verifier.close()
    return 0


def _announce(line: str) -> None:
    print(f"rlfleet serve rollout: {line}", file=sys.stderr, flush=True)


# -- rlfleet generate ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GenerateConfig:
    server: str
    """A running ``rlfleet serve rollout`` (``RolloutClient`` targets)."""
    prompts: Path
    """JSONL file of prompts; ``-`` reads standard input."""
    sampling: SamplingParams
    """Applied to every prompt (``seed``: sample i of each prompt uses seed + i)."""
    n: int = 1
    """Samples per prompt."""
    prompts_per_call: int = 64
    """Prompts sent in one Generate call."""
    calls: int = 4
    """Generate calls in flight at once (completions print as they arrive)."""

    def __post_init__(self) -> None:
        if self.n < 1 or self.prompts_per_call < 1 or self.calls < 1:
            raise ValueError("n, prompts_per_call and calls must be >= 1")


def parse_prompt(obj: Any, n: int) -> Prompt:
    """One input line of ``rlfleet generate``: ``{"id", "prompt", "kind": "math", "gold"}``
    or ``{"id", "prompt", "kind": "code", "language", "tests", ...}`` (the test format of
    ``rlfleet verify``), or without ``kind``: returned unscored. ``prompt`` is text or a
    list of token ids. Raises ``CaseError`` naming the field."""
    if not isinstance(obj, dict):
        raise CaseError("prompt", f"expected a JSON object, got {type(obj).__name__}")
    prompt_id = obj.get("id")
    if not isinstance(prompt_id, str | int) or isinstance(prompt_id, bool) or prompt_id == "":
        raise CaseError("id", "missing" if prompt_id in (None, "") else "expected a string")
    prompt_id = str(prompt_id)
    raw = obj.get("prompt")
    text: str | None = None
    token_ids: tuple[int, ...] | None = None
    if isinstance(raw, str) and raw:
        text = raw
    elif isinstance(raw, list) and raw and all(_is_token(t) for t in raw):
        token_ids = tuple(raw)
    else:
        what = "missing" if raw in (None, "", []) else "expected text or a list of token ids"
        raise CaseError("prompt", what)
    verification = None
    kind = obj.get("kind")
    if kind == "math":
        verification = parse_case({"id": prompt_id, "kind": "math", "completion": "", **_gold(obj)})
    elif kind == "code":
        spec = {k: v for k, v in obj.items() if k not in ("prompt", "code")}
        verification = parse_case({**spec, "id": prompt_id, "code": ""})
    elif kind is not None:
        raise CaseError("kind", f"unknown {kind!r} (one of code, math; or leave it out)")
    return Prompt(id=prompt_id, text=text, token_ids=token_ids, n=n, verification=verification)


def _is_token(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and t >= 0


def _gold(obj: dict[str, Any]) -> dict[str, Any]:
    return {"gold": obj["gold"]} if "gold" in obj else {}


@dataclass(frozen=True, kw_only=True)
class PromptLine:
    prompt: Prompt | None = None
    error: dict[str, Any] | None = None


def read_prompts(stream: IO[bytes], n: int) -> Iterator[PromptLine]:
    """Each non-blank line, parsed; invalid lines (bad JSON or UTF-8, a bad field, an id
    seen before) become ``{"line" or "id", "error"}``."""
    seen: set[str] = set()
    for number, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError as e:
            yield PromptLine(error={"line": number, "error": f"invalid JSON: {e}"})
            continue
        ref: dict[str, Any] = {"line": number}
        if isinstance(obj, dict) and isinstance(obj.get("id"), str | int):
            ref = {"id": obj["id"]}
        try:
            prompt = parse_prompt(obj, n)
            if prompt.id in seen:
                raise CaseError("id", "duplicate (each prompt's id must be unique)")
        except CaseError as e:
            yield PromptLine(error={**ref, "error": str(e)})
            continue
        seen.add(prompt.id)
        yield PromptLine(prompt=prompt)


def completion_json(c: Completion) -> dict[str, Any]:
    """One output line of ``rlfleet generate``."""
    out: dict[str, Any] = {
        "id": c.prompt_id,
        "sample": c.sample,
        "seed": c.seed,
        "text": c.text,
        "prompt_token_ids": list(c.prompt_token_ids),
        "token_ids": list(c.token_ids),
        "logprobs": list(c.logprobs),
        "finish_reason": c.finish_reason.value,
        "policy_version": c.versions[-1].version if c.versions else None,
        "versions": [{"version": v.version, "start": v.start, "end": v.end} for v in c.versions],
        "reward": c.result.reward if c.result is not None else None,
        "verdict": c.result.verdict.value if c.result is not None else None,
        "timings": {
            "queued_s": round(c.timings.queued_s, 6),
            "first_token_s": round(c.timings.first_token_s, 6),
            "generate_s": round(c.timings.generate_s, 6),
            "verify_s": round(c.timings.verify_s, 6),
        },
    }
    if c.result is not None:
        out["result"] = c.result.to_json()
    else:
        out["unscored_reason"] = c.unscored_reason
    return out


_PROMPT_INDEX = re.compile(r"^prompts\[(\d+)\]\.")


def _refusal(message: str, batch: list[Prompt]) -> str:
    """The server's refusal of a call, naming the prompt by id rather than by its index in
    that call."""
    m = _PROMPT_INDEX.match(message)
    if m and int(m.group(1)) < len(batch):
        return f"prompt {batch[int(m.group(1))].id!r}: {message[m.end() :]}"
    return message


async def generate(config: GenerateConfig, out: TextIO = sys.stdout) -> int:
    """Generate completions for ``config.prompts``, one JSON line each as they arrive.

    Returns 0, or 2 when an input line was invalid (its error is printed in its place and
    the other prompts still run). No server answering ends the run with ``CommandError``
    (exit 1), after what was printed before it; a prompt the server refuses ends it with
    ``UsageError``.
    """
    from rlfleet.rollout.client import RequestRejected, RolloutClient
    from rlfleet.sandbox.commands import open_input

    try:
        client = RolloutClient(config.server)
    except ValueError as e:
        raise UsageError(f"--server: {e}") from e
    invalid = False
    slots = asyncio.Semaphore(config.calls)
    failed: list[BaseException] = []

    def emit(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    async def run(batch: list[Prompt]) -> None:
        try:
            request = GenerateRequest(prompts=tuple(batch), sampling=config.sampling)
            async for completion in client.generate(request):
                emit(completion_json(completion))
        except RequestRejected as e:
            failed.append(UsageError(f"the server refused {_refusal(str(e), batch)}"))
        except Exception as e:  # ends the run (raised below, after the other calls stop)
            failed.append(e)
        finally:
            slots.release()

    tasks: set[asyncio.Task[None]] = set()
    try:
        async with client:
            with open_input(config.prompts) as stream:
                batch: list[Prompt] = []
                lines = read_prompts(stream, config.n)
                while not failed:
                    line = next(lines, None)
                    if line is not None and line.error is not None:
                        invalid = True
                        emit(line.error)
                        continue
                    if line is not None and line.prompt is not None:
                        batch.append(line.prompt)
                    if batch and (line is None or len(batch) == config.prompts_per_call):
                        await slots.acquire()
                        task = asyncio.create_task(run(batch))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        batch = []
                    if line is None:
                        break
                while tasks and not failed:
                    await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if failed:
        error = failed[0]
        if isinstance(error, Unavailable):
            raise CommandError(
                f"{error}; start one with `rlfleet serve rollout`, or check --server"
            ) from error
        if isinstance(error, grpc.aio.AioRpcError):
            raise CommandError(
                f"the server failed: {error.code().name}: {error.details()}"
            ) from error
        raise error
    return EXIT_USAGE if invalid else EXIT_OK


# -- rlfleet push-weights --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PushWeightsConfig:
    server: str
    """A running ``rlfleet serve rollout``."""
    model: Path
    """HF model directory whose ``*.safetensors`` are pushed."""
    version: int
    """Policy version the server serves once they are applied (newer than its current)."""
    bucket_mb: int = 8
    """MiB of tensor data per message (the server holds a few at a time)."""
    transport: Literal["auto", "data-plane", "grpc"] = "auto"
    """How the bytes travel (``client.ClientConfig.weight_transport``)."""

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError("version: must be >= 1")
        if not 1 <= self.bucket_mb <= 63:
            raise ValueError("bucket_mb: must be 1 to 63 (a message is at most 64 MiB)")


async def push_weights(config: PushWeightsConfig, out: TextIO = sys.stdout) -> int:
    """Push ``config.model``'s weights; prints one JSON line with what was applied."""
    from rlfleet.rollout.checksum import ChecksumUnavailable
    from rlfleet.rollout.client import (
        ClientConfig,
        DataPlaneUnavailable,
        RolloutClient,
        WeightsRejected,
    )
    from rlfleet.rollout.weights import DirectorySource, WeightFileError

    try:
        source = DirectorySource(config.model)
    except WeightFileError as e:
        raise UsageError(f"--model {e}") from e
    try:
        client = RolloutClient(config.server, ClientConfig(weight_transport=config.transport))
    except ValueError as e:
        raise UsageError(f"--server: {e}") from e
    t0 = time.perf_counter()
    try:
        async with client:
            result = await client.push_weights(source, config.version, config.bucket_mb << 20)
    except WeightsRejected as e:
        if e.code is grpc.StatusCode.DATA_LOSS:
            raise CommandError(f"the server refused the update ({e}); push it again") from e
        raise UsageError(f"the server refused the update: {e}") from e
    except Unavailable as e:
        raise CommandError(f"{e}; start one with `rlfleet serve rollout`, or check --server") from e
    except DataPlaneUnavailable as e:
        raise CommandError(f"{e}; push with --transport auto or grpc") from e
    except ChecksumUnavailable as e:
        raise CommandError(str(e)) from e
    except WeightFileError as e:
        raise UsageError(f"--model {e}") from e
    seconds = time.perf_counter() - t0
    summary = {
        "version": result.version,
        "bytes": result.bytes,
        "seconds": round(seconds, 4),
        "mb_per_s": round(result.bytes / 1e6 / seconds, 1) if seconds > 0 else None,
        "receive_s": round(result.receive_s, 4),
        "apply_s": round(result.apply_s, 4),
    }
    out.write(json.dumps(summary) + "\n")
    return EXIT_OK


def model_init(preset: Preset, seed: int, out_dir: Path, force: bool = False) -> int:
    """``rlfleet model init``: write the preset's model directory into ``out_dir``.

    A directory that exists and is not empty is refused unless ``force`` (its files of the
    same names are then overwritten, others left as they are)."""
    from rlfleet.rollout.model_init import write_model

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise UsageError(f"{out_dir}: not empty; choose a new directory, or pass --force")
    try:
        write_model(out_dir, preset=preset, seed=seed)
    except OSError as e:
        raise CommandError(f"{out_dir}: cannot write it ({e.strerror or e})") from e
    return 0
