"""Proto messages <-> rollout records, at the edge of the service and its client.

Requests are validated here, and every refusal names the field the way the verifier's do
(``prompts[2].n: must be >= 1``, ``prompts[0].verification.code.tests[1].stdout: missing``):
a ``BadRequest``, which the server answers with INVALID_ARGUMENT. The verification spec is
the verifier's own ``CodeCase``/``MathCase`` and goes through the verifier's own validation
(``sandbox.convert.request_to_case``), so a spec this server accepts is one the verifier
accepts.

Enums map one to one; a number this side does not know is refused by name in a request and
raised as ``UnknownEnumValue`` in a response (never guessed at).
"""

from __future__ import annotations

import math

from google.protobuf.message import DecodeError

from rlfleet.grpc_server import BadRequest
from rlfleet.rollout import checksum as checksums
from rlfleet.rollout.records import (
    BROADCAST_BACKENDS,
    Completion,
    DType,
    EngineStatus,
    FinishReason,
    GenerateRequest,
    Prompt,
    SamplingParams,
    TensorSpec,
    Timings,
    Verification,
    VersionSpan,
    WeightGroup,
    WeightManifest,
    WeightUpdateResult,
)
from rlfleet.sandbox.cases import CaseError
from rlfleet.sandbox.convert import (
    UnknownEnumValue,
    problem_from_case,
    request_to_case,
    response_to_result,
    result_to_response,
)
from rlfleet.sandbox.records import MathCase
from rlfleet.v1 import rollout_pb2 as pb
from rlfleet.v1 import verifier_pb2 as vpb

_FINISH_TO_PB = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.ABORT: pb.FINISH_REASON_ABORT,
}
_FINISH_FROM_PB = {n: r for r, n in _FINISH_TO_PB.items()}
_DTYPE_TO_PB = {
    DType.FLOAT32: pb.TENSOR_DTYPE_FLOAT32,
    DType.FLOAT16: pb.TENSOR_DTYPE_FLOAT16,
    DType.BFLOAT16: pb.TENSOR_DTYPE_BFLOAT16,
}
_DTYPE_FROM_PB = {n: d for d, n in _DTYPE_TO_PB.items()}
UINT64 = 1 << 64


# -- Generate: requests ---------------------------------------------------------------------


def sampling_from_pb(s: pb.SamplingParams) -> SamplingParams:
    where = "sampling."
    if s.max_new_tokens < 1:
        raise BadRequest(f"{where}max_new_tokens", "must be >= 1")
    if not math.isfinite(s.temperature) or s.temperature < 0:
        raise BadRequest(f"{where}temperature", f"must be >= 0, got {s.temperature}")
    top_p = s.top_p if s.HasField("top_p") else 1.0
    if not 0 < top_p <= 1:  # (NaN fails this too)
        raise BadRequest(f"{where}top_p", f"must be in (0, 1], got {top_p}")
    top_k = s.top_k if s.HasField("top_k") else 0
    if top_k < 0:
        raise BadRequest(f"{where}top_k", f"must be >= 0, got {top_k}")
    for i, stop in enumerate(s.stop):
        if not stop:
            raise BadRequest(f"{where}stop[{i}]", "empty")
    for i, token in enumerate(s.stop_token_ids):
        if token < 0:
            raise BadRequest(f"{where}stop_token_ids[{i}]", f"must be >= 0, got {token}")
    return SamplingParams(
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_p=top_p,
        top_k=top_k,
        stop=tuple(s.stop),
        stop_token_ids=tuple(s.stop_token_ids),
        seed=s.seed if s.HasField("seed") else None,
    )


def verification_from_pb(v: pb.Verification, prompt_id: str, where: str) -> Verification:
    """The verifier's case for a prompt, its completion part left empty; ``where`` prefixes
    the field names of errors (``prompts[2].verification.``)."""
    kind = v.WhichOneof("kind")
    if kind == "math":
        request = vpb.VerifyRequest(id=prompt_id, math=v.math)
        if v.math.completion:
            raise BadRequest(f"{where}math.completion", "must be empty (the completion fills it)")
    elif kind == "code":
        if v.code.code:
            raise BadRequest(f"{where}code.code", "must be empty (the completion fills it)")
        if v.code.WhichOneof("suite") == "problem_ref":
            # This server keeps no problem store: the verifier client sends large suites by
            # reference to the verifier fleet on its own.
            raise BadRequest(f"{where}code.problem_ref", "not supported here (send the problem)")
        for i, t in enumerate(v.code.problem.stdio_tests):
            # proto3 tells "" from unset only when asked (as the verifier's servicer does).
            if not t.HasField("stdout"):
                raise BadRequest(f"{where}code.tests[{i}].stdout", "missing")
        request = vpb.VerifyRequest(id=prompt_id, code=v.code)
    else:
        raise BadRequest(f"{where}kind", "missing (set code or math)")
    try:
        case = request_to_case(request, {})
    except CaseError as e:
        raise BadRequest(f"{where}{kind}.{e.field}", e.message) from None
    return case


def prompt_from_pb(p: pb.Prompt, where: str) -> Prompt:
    if not p.id:
        raise BadRequest(f"{where}id", "missing")
    if p.n < 1:
        raise BadRequest(f"{where}n", f"must be >= 1, got {p.n}")
    text: str | None = None
    token_ids: tuple[int, ...] | None = None
    which = p.WhichOneof("input")
    if which == "text":
        if not p.text:
            raise BadRequest(f"{where}text", "empty")
        text = p.text
    elif which == "token_ids":
        if not p.token_ids.ids:
            raise BadRequest(f"{where}token_ids", "empty")
        for j, t in enumerate(p.token_ids.ids):
            if t < 0:
                raise BadRequest(f"{where}token_ids[{j}]", f"must be >= 0, got {t}")
        token_ids = tuple(p.token_ids.ids)
    else:
        raise BadRequest(f"{where}input", "missing (set text or token_ids)")
    verification = None
    if p.HasField("verification"):
        verification = verification_from_pb(p.verification, p.id, f"{where}verification.")
    seed = p.seed if p.HasField("seed") else None
    return Prompt(
        id=p.id, text=text, token_ids=token_ids, n=p.n, verification=verification, seed=seed
    )


def request_from_pb(req: pb.GenerateRequest) -> GenerateRequest:
    """Validate a request into a record; raises ``BadRequest`` naming the field."""
    if not req.prompts:
        raise BadRequest("prompts", "empty")
    if not req.HasField("sampling"):
        raise BadRequest("sampling", "missing")
    sampling = sampling_from_pb(req.sampling)
    prompts = []
    seen: set[str] = set()
    for i, p in enumerate(req.prompts):
        prompt = prompt_from_pb(p, f"prompts[{i}].")
        if prompt.id in seen:
            raise BadRequest(f"prompts[{i}].id", f"duplicate {prompt.id!r}")
        seen.add(prompt.id)
        prompts.append(prompt)
    return GenerateRequest(prompts=tuple(prompts), sampling=sampling)


def verification_to_pb(case: Verification) -> pb.Verification:
    if isinstance(case, MathCase):
        return pb.Verification(math=vpb.MathCase(gold=case.gold))
    return pb.Verification(
        code=vpb.CodeCase(
            language=case.language, early_stop=case.early_stop, problem=problem_from_case(case)
        )
    )


def request_to_pb(req: GenerateRequest) -> pb.GenerateRequest:
    s = req.sampling
    sampling = pb.SamplingParams(
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        stop=s.stop,
        stop_token_ids=s.stop_token_ids,
    )
    if s.seed is not None:
        sampling.seed = s.seed % UINT64
    out = pb.GenerateRequest(sampling=sampling)
    for p in req.prompts:
        prompt = out.prompts.add(id=p.id, n=p.n)
        if p.seed is not None:
            prompt.seed = p.seed % UINT64
        if p.text is not None:
            prompt.text = p.text
        else:
            prompt.token_ids.ids.extend(p.token_ids or ())
        if p.verification is not None:
            prompt.verification.CopyFrom(verification_to_pb(p.verification))
    return out


# -- Generate: completions ------------------------------------------------------------------


def completion_to_pb(c: Completion) -> pb.Completion:
    out = pb.Completion(
        prompt_id=c.prompt_id,
        sample=c.sample,
        prompt_token_ids=c.prompt_token_ids,
        token_ids=c.token_ids,
        logprobs=c.logprobs,
        finish_reason=_FINISH_TO_PB[c.finish_reason],
        versions=[pb.VersionSpan(version=v.version, start=v.start, end=v.end) for v in c.versions],
        text=c.text,
        seed=c.seed % UINT64,
        scored=c.scored,
        unscored_reason=c.unscored_reason,
        timings=pb.Timings(
            queued_s=c.timings.queued_s,
            first_token_s=c.timings.first_token_s,
            generate_s=c.timings.generate_s,
            verify_s=c.timings.verify_s,
        ),
    )
    if c.result is not None:
        out.verification.CopyFrom(result_to_response(c.result))
    return out


def completion_from_pb(c: pb.Completion) -> Completion:
    """Raises ``UnknownEnumValue`` for a finish reason or verdict this side does not know."""
    try:
        reason = _FINISH_FROM_PB[c.finish_reason]
    except KeyError:
        raise UnknownEnumValue("finish_reason", c.finish_reason) from None
    return Completion(
        prompt_id=c.prompt_id,
        sample=c.sample,
        prompt_token_ids=tuple(c.prompt_token_ids),
        token_ids=tuple(c.token_ids),
        logprobs=tuple(c.logprobs),
        finish_reason=reason,
        versions=tuple(
            VersionSpan(version=v.version, start=v.start, end=v.end) for v in c.versions
        ),
        text=c.text,
        seed=c.seed,
        result=response_to_result(c.verification) if c.scored else None,
        unscored_reason=c.unscored_reason,
        timings=Timings(
            queued_s=c.timings.queued_s,
            first_token_s=c.timings.first_token_s,
            generate_s=c.timings.generate_s,
            verify_s=c.timings.verify_s,
        ),
    )


# -- UpdateWeights ---------------------------------------------------------------------------


def manifest_from_pb(begin: pb.WeightUpdateBegin) -> WeightManifest:
    """Validate the first message of an update; raises ``BadRequest`` naming the field."""
    where = "begin."
    if not begin.tensors:
        raise BadRequest(f"{where}tensors", "empty")
    tensors = []
    seen: set[str] = set()
    for i, t in enumerate(begin.tensors):
        at = f"{where}tensors[{i}]"
        if not t.name:
            raise BadRequest(f"{at}.name", "missing")
        if t.name in seen:
            raise BadRequest(f"{at}.name", f"duplicate {t.name!r}")
        seen.add(t.name)
        dtype = _DTYPE_FROM_PB.get(t.dtype)
        if dtype is None:
            what = "missing" if t.dtype == pb.TENSOR_DTYPE_UNSPECIFIED else f"unknown {t.dtype}"
            names = ", ".join(d.value for d in DType)
            raise BadRequest(f"{at}.dtype", f"{what} (one of {names}) for {t.name!r}")
        for j, d in enumerate(t.shape):
            if d < 0:
                raise BadRequest(f"{at}.shape[{j}]", f"must be >= 0, got {d} for {t.name!r}")
        tensors.append(TensorSpec(name=t.name, dtype=dtype, shape=tuple(t.shape)))
    return WeightManifest(version=begin.version, tensors=tuple(tensors))


def checksum_from_pb(begin: pb.WeightUpdateBegin) -> str:
    """The update's checksum algorithm (``begin.checksum``; a begin that names none is from a
    sender before algorithms were named: sha256); raises ``BadRequest`` for an unknown one."""
    if not begin.checksum:
        return checksums.LEGACY
    if begin.checksum not in checksums.ALGORITHMS:
        known = ", ".join(checksums.ALGORITHMS)
        raise BadRequest("begin.checksum", f"unknown algorithm {begin.checksum!r} (one of {known})")
    return begin.checksum


def digest_from_pb(msg: pb.WeightChunk, begin: pb.WeightUpdateBegin) -> str | None:
    """The checksum digest ``msg`` carries, if any: in ``checksum``, or in ``sha256`` when
    ``begin`` names no algorithm; raises ``BadRequest`` for the field that does not fit."""
    if not begin.checksum:
        if msg.checksum:
            raise BadRequest("checksum", "begin names no algorithm for it (begin.checksum)")
        return msg.sha256 or None
    if msg.sha256:
        raise BadRequest("sha256", f"superseded: this update's {begin.checksum} goes in checksum")
    return msg.checksum or None


def broadcast_manifest_from_pb(req: pb.BroadcastWeightsRequest) -> tuple[WeightManifest, str]:
    """A BroadcastWeights request's manifest and group; raises ``BadRequest`` naming the
    field (the tensors' fields as an UpdateWeights ``begin``'s)."""
    manifest = manifest_from_pb(pb.WeightUpdateBegin(version=req.version, tensors=req.tensors))
    if not req.group_name:
        raise BadRequest("group_name", "missing")
    return manifest, req.group_name


def broadcast_request_to_pb(m: WeightManifest, group_name: str) -> pb.BroadcastWeightsRequest:
    begin = manifest_to_pb(m)
    return pb.BroadcastWeightsRequest(
        version=begin.version, tensors=begin.tensors, group_name=group_name
    )


def weight_group_from_pb(g: pb.WeightGroup) -> WeightGroup:
    """Validate a JoinWeightGroup request; raises ``BadRequest`` naming the field."""
    if not g.master_address:
        raise BadRequest("master_address", "missing")
    if not 0 < g.master_port < 65536:
        raise BadRequest("master_port", f"{g.master_port} is not a port number (1-65535)")
    if not g.group_name:
        raise BadRequest("group_name", "missing")
    if g.backend not in BROADCAST_BACKENDS:
        known = ", ".join(BROADCAST_BACKENDS)
        raise BadRequest("backend", f"{g.backend!r} is not one of {known}")
    if g.rank_offset < 1:
        raise BadRequest("rank_offset", f"{g.rank_offset}: must be >= 1 (the learner is 0)")
    if g.world_size <= g.rank_offset:
        raise BadRequest("world_size", f"{g.world_size} leaves no rank after {g.rank_offset}")
    return WeightGroup(
        master_address=g.master_address,
        master_port=g.master_port,
        group_name=g.group_name,
        backend=g.backend,
        world_size=g.world_size,
        rank_offset=g.rank_offset,
    )


def weight_group_to_pb(g: WeightGroup) -> pb.WeightGroup:
    return pb.WeightGroup(
        master_address=g.master_address,
        master_port=g.master_port,
        group_name=g.group_name,
        backend=g.backend,
        world_size=g.world_size,
        rank_offset=g.rank_offset,
    )


def manifest_to_pb(m: WeightManifest) -> pb.WeightUpdateBegin:
    return pb.WeightUpdateBegin(
        version=m.version,
        tensors=[
            pb.TensorSpec(name=t.name, dtype=_DTYPE_TO_PB[t.dtype], shape=t.shape)
            for t in m.tensors
        ],
    )


def update_result_to_pb(r: WeightUpdateResult) -> pb.WeightUpdateResult:
    return pb.WeightUpdateResult(
        version=r.version, bytes=r.bytes, receive_s=r.receive_s, apply_s=r.apply_s
    )


def update_result_from_pb(r: pb.WeightUpdateResult) -> WeightUpdateResult:
    return WeightUpdateResult(
        version=r.version, bytes=r.bytes, receive_s=r.receive_s, apply_s=r.apply_s
    )


# -- Status ----------------------------------------------------------------------------------


def status_to_pb(s: EngineStatus) -> pb.StatusResponse:
    return pb.StatusResponse(
        engine=s.engine,
        model=s.model,
        version=s.version,
        running=s.running,
        queued=s.queued,
        device=s.device,
        broadcast_ranks=s.broadcast_ranks,
    )


def status_from_pb(s: pb.StatusResponse) -> EngineStatus:
    return EngineStatus(
        engine=s.engine,
        model=s.model,
        version=s.version,
        running=s.running,
        queued=s.queued,
        device=s.device,
        broadcast_ranks=s.broadcast_ranks,
    )


# -- UpdateWeights on the wire: data chunks without protobuf copies --------------------------
# A WeightChunk that carries only ``data`` is the field's tag, its length as a varint, then
# the bytes. Building and reading those by hand spares the two copies protobuf makes of each
# bucket (into the message, and out of it again), which at gigabytes per push is most of the
# CPU the transport costs. Every other message goes through protobuf.

_DATA_TAG = 0x12  # field 2 (data), wire type 2 (length-delimited)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def data_chunk_bytes(data: bytes | memoryview) -> bytes:
    """The serialized ``WeightChunk(data=data)``."""
    return b"".join((bytes([_DATA_TAG]), _varint(len(data)), data))


def weight_chunk_from_bytes(raw: bytes) -> memoryview | pb.WeightChunk:
    """A data-only chunk as a view of its bytes (no copy), any other chunk parsed; raises
    ``BadRequest`` for bytes that are not a ``WeightChunk``."""
    if len(raw) > 1 and raw[0] == _DATA_TAG:
        length, shift, i = 0, 0, 1
        while i < len(raw) and i < 11:
            byte = raw[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                if i + length == len(raw):
                    return memoryview(raw)[i:]
                break
            shift += 7
    try:
        return pb.WeightChunk.FromString(raw)
    except DecodeError:
        raise BadRequest("request", "not a valid WeightChunk message") from None
