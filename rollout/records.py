"""Typed records passed between the rollout service's stages.

A ``GenerateRequest`` arrives (gRPC or the CLI), each of its prompts becomes ``n``
``SampleRequest``s for the engine, the engine streams ``TokenChunk``s back, and each finished
sample leaves as a ``Completion``, scored by the verifier fleet when its prompt asked for it.
Weight updates arrive as a ``WeightManifest`` plus bytes and are applied as a
``WeightUpdate``. Nothing else crosses stage boundaries.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from rlfleet.sandbox.records import CaseResult, CodeCase, MathCase


class FinishReason(enum.StrEnum):
    STOP = "stop"  # end-of-sequence, a stop token id or a stop string
    LENGTH = "length"  # max_new_tokens reached
    ABORT = "abort"  # cancelled, or the engine failed


class DType(enum.StrEnum):
    """Element types of pushed weights (raw bytes little-endian, C order)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"

    @property
    def itemsize(self) -> int:
        return 4 if self is DType.FLOAT32 else 2


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    max_new_tokens: int
    """Tokens generated at most (>= 1)."""
    temperature: float = 1.0
    """0: greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    top_k: int = 0
    """Keep the k most likely tokens; 0: off."""
    stop: tuple[str, ...] = ()
    """Stop strings: generation ends when the decoded text contains one (it is cut off)."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end generation (besides the tokenizer's end-of-sequence token)."""
    seed: int | None = None
    """Sample i of a prompt uses seed + i; None: the server draws one per prompt."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens: must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p: must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k: must be >= 0")


Verification = CodeCase | MathCase
"""What a completion is checked against; ``CodeCase.code`` / ``MathCase.completion`` are
left empty and filled from the completion."""


@dataclass(frozen=True, kw_only=True)
class Prompt:
    id: str
    text: str | None = None
    token_ids: tuple[int, ...] | None = None
    """Exactly one of ``text`` and ``token_ids``."""
    n: int = 1
    """Samples of this prompt (the group size)."""
    verification: Verification | None = None
    seed: int | None = None
    """Sample i of this prompt uses seed + i; None: the call's ``sampling.seed``."""

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("id: missing")
        if (self.text is None) == (self.token_ids is None):
            raise ValueError(f"prompt {self.id!r}: give exactly one of text and token_ids")
        if self.n < 1:
            raise ValueError(f"prompt {self.id!r}: n must be >= 1")


@dataclass(frozen=True, kw_only=True)
class GenerateRequest:
    prompts: tuple[Prompt, ...]
    sampling: SamplingParams


@dataclass(frozen=True, kw_only=True)
class SampleRequest:
    """One sequence for the engine to generate."""

    key: str
    """Unique among the engine's requests (prompt id, sample index, call)."""
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    """With ``seed`` set: this sample's own seed."""


@dataclass(frozen=True, kw_only=True)
class TokenChunk:
    """Tokens an engine produced for one sequence since its last chunk."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    """log p(token) under the sampling distribution (see ``Completion.logprobs``)."""
    version: int
    """Policy version that generated these tokens."""
    finish_reason: FinishReason | None = None
    """Set on the sequence's last chunk."""


@dataclass(frozen=True, kw_only=True)
class VersionSpan:
    version: int
    start: int
    end: int
    """Tokens [start, end) of the completion came from policy ``version``."""


@dataclass(frozen=True, kw_only=True)
class Timings:
    queued_s: float = 0.0
    first_token_s: float = 0.0
    generate_s: float = 0.0
    verify_s: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Completion:
    prompt_id: str
    sample: int
    prompt_token_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishReason
    versions: tuple[VersionSpan, ...]
    text: str
    seed: int
    result: CaseResult | None = None
    """The verifier's result (verdict, reward, details); None when unscored."""
    unscored_reason: str = ""
    """Why ``result`` is None: "not requested", or what failed on the way to the verifier."""
    timings: Timings = field(default_factory=Timings)

    @property
    def scored(self) -> bool:
        return self.result is not None


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    name: str
    """Hugging Face parameter name."""
    dtype: DType
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count * self.dtype.itemsize


@dataclass(frozen=True, kw_only=True)
class WeightManifest:
    version: int
    tensors: tuple[TensorSpec, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True, kw_only=True)
class EngineStatus:
    engine: str
    """torch | sglang"""
    model: str
    version: int
    running: int
    queued: int
    device: str
    broadcast_ranks: int = 0
    """Ranks the engine brings to a weight group (0: it cannot receive weights by
    broadcast)."""


BROADCAST_BACKENDS = ("nccl", "gloo")
"""torch.distributed backends a weight group may use: NCCL between GPUs, gloo on CPU."""


@dataclass(frozen=True, kw_only=True)
class WeightGroup:
    """A process group of the learner's rank 0 (the group's rank 0, serving its store) and a
    rollout server's engine ranks, over which new weights are broadcast."""

    master_address: str
    master_port: int
    group_name: str
    """Unique per group: also the prefix of its keys in the store."""
    backend: str
    """One of ``BROADCAST_BACKENDS``."""
    world_size: int
    rank_offset: int
    """The engine's first rank (1: the learner is rank 0)."""


@dataclass(frozen=True, kw_only=True)
class WeightUpdateResult:
    """A weight update that was received, checked and applied."""

    version: int
    """Policy version now serving."""
    bytes: int
    """Tensor bytes received (the manifest's total)."""
    receive_s: float
    """From the first message to the checksum verified (spooled to disk)."""
    apply_s: float
    """The engine's ``update_weights``."""
