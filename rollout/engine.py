"""The engine interface: what the rollout service needs from a generator.

Two implementations: ``torch_engine`` (built in, transformers' model code with this
project's own batched decode loop; CPU or one GPU) and ``sglang_engine`` (SGLang as a
subprocess, over its gRPC scheduler API). The servicer only ever sees this Protocol, so
tests drive it with fakes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from rlfleet.rollout.records import (
    EngineStatus,
    SampleRequest,
    TokenChunk,
    WeightGroup,
    WeightManifest,
)


class WeightMismatch(ValueError):
    """A pushed tensor does not fit the model (unknown name, wrong shape or dtype); the
    message names the tensor. Raised before any byte of the update is applied."""


class EngineError(RuntimeError):
    """The engine failed (not the request's fault); the message says what to do."""


@dataclass(frozen=True, kw_only=True)
class WeightUpdate:
    """A complete, verified update: ``path`` is a safetensors file holding exactly the
    manifest's tensors, whose bytes arrived whole and matched the sender's checksum."""

    manifest: WeightManifest
    path: Path


class Tokenizer(Protocol):
    @property
    def eos_token_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...


class Engine(Protocol):
    @property
    def tokenizer(self) -> Tokenizer: ...

    def generate(self, request: SampleRequest) -> AsyncIterator[TokenChunk]:
        """Stream one sequence's tokens as they are decoded; the last chunk carries the
        finish reason. Closing the iterator (the caller cancelled) frees its slot at the
        next decode step."""
        ...

    def generate_many(
        self, requests: Sequence[SampleRequest]
    ) -> Sequence[AsyncIterator[TokenChunk]]:
        """``generate`` for each request (a call's samples), in order. An engine that
        batches them itself takes them in together: none is started before all are queued,
        so the same requests sent to an idle engine are decoded in the same batches every
        time (the torch engine; a run is then reproducible to the bit). Each iterator must
        be closed (``aclose``) if the caller stops reading it before its end."""
        ...

    def check_manifest(self, manifest: WeightManifest) -> None:
        """Raise ``WeightMismatch`` unless every tensor names a parameter of the model with
        the same shape and dtype (checked before the update's bytes are received)."""
        ...

    async def update_weights(self, update: WeightUpdate) -> None:
        """Apply the update between two decode steps, all of it or nothing; sequences in
        flight go on with the new weights (their next chunks carry the new version)."""
        ...

    def status(self) -> EngineStatus: ...

    async def close(self) -> None: ...


@runtime_checkable
class BroadcastReceiver(Protocol):
    """An engine that can also take new weights by broadcast (docs/weight-push.md "By
    broadcast"): it joins a learner's weight group, then receives each version's tensors
    from the group's rank 0 in manifest order."""

    @property
    def broadcast_ranks(self) -> int:
        """Ranks the engine brings to a group (0: it cannot receive broadcasts now)."""
        ...

    async def join_weight_group(self, group: WeightGroup) -> None:
        """Join ``group`` (ranks ``rank_offset ..``); returns once joined. A group joined
        before is left behind: the learner always joins with a new name."""
        ...

    async def receive_weights(self, manifest: WeightManifest, group_name: str) -> None:
        """Receive the manifest's tensors by broadcast in ``group_name`` and load them,
        between two decode steps; sequences in flight go on with the new weights. Raises
        ``EngineError`` when the broadcast or the load failed (the weights may then be partly
        updated)."""
        ...
