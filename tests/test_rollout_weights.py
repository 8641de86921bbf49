"""Weight updates: the sender's buckets, the receiver's spool (a real safetensors file),
pushes through the client, updates landing mid-generation, and every way a stream is
refused with the old weights still serving."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import shutil
import socket
import subprocess
import threading
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
import xxhash
from prometheus_client import CollectorRegistry
from rollout_fakes import PARAMS, FakeEngine, Running, generate_request, math_prompt, until
from safetensors import safe_open
from safetensors.torch import save_file

from rlfleet.grpc_server import ServerConfig
from rlfleet.rollout import checksum as checksums
from rlfleet.rollout.client import (
    ClientConfig,
    DataPlaneUnavailable,
    RolloutClient,
    WeightsRejected,
    iter_weight_chunks,
    one_server_host,
)
from rlfleet.rollout.convert import manifest_to_pb
from rlfleet.rollout.data_plane import PORT_KEY, TOKEN_KEY
from rlfleet.rollout.engine import EngineError
from rlfleet.rollout.records import DType, TensorSpec, WeightManifest
from rlfleet.rollout.servicer import ServiceConfig, build_rollout_server
from rlfleet.rollout.weights import (
    DirectorySource,
    Spool,
    TensorSource,
    WeightFileError,
    WeightSource,
    open_source,
    read_safetensors_header,
)
from rlfleet.v1 import rollout_pb2 as pb
from rlfleet.v1 import rollout_pb2_grpc as pb_grpc

TORCH_DTYPES = {
    DType.FLOAT32: torch.float32,
    DType.FLOAT16: torch.float16,
    DType.BFLOAT16: torch.bfloat16,
}


def model_tensors(seed: int = 1) -> dict[str, torch.Tensor]:
    """Tensors that fit the fake engine's parameter table."""
    g = torch.Generator().manual_seed(seed)
    return {t.name: torch.randn(t.shape, generator=g).to(TORCH_DTYPES[t.dtype]) for t in PARAMS}


def raw(t: torch.Tensor) -> bytes:
    return bytes(t.contiguous().view(-1).view(torch.uint8).tolist())


def write_model(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """An HF-style directory with two shards."""
    path.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    save_file({n: tensors[n] for n in names[:1]}, str(path / "model-00001-of-00002.safetensors"))
    save_file({n: tensors[n] for n in names[1:]}, str(path / "model-00002-of-00002.safetensors"))
    (path / "config.json").write_text("{}")
    return path


# -- the bytes ----------------------------------------------------------------------------


def test_the_spool_is_a_safetensors_file_safetensors_loads(tmp_path: Path) -> None:
    tensors = {
        "a": torch.randn(3, 5),
        "b.weight": torch.randn(7).to(torch.bfloat16),
        "c": torch.randn(2, 2, 2).to(torch.float16),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }
    source = TensorSource(tensors)
    manifest = source.manifest(3)
    spool = Spool(manifest, tmp_path / "u.safetensors")
    digest = checksums.new_hasher(checksums.DEFAULT)
    for data in source.chunks(5):
        spool.write(data)
        digest.update(data)
    spool.finish(digest.hexdigest())
    with safe_open(str(tmp_path / "u.safetensors"), framework="pt") as f:
        assert list(f.keys()) == sorted(tensors)
        for name, t in tensors.items():
            assert torch.equal(f.get_tensor(name), t), name
    assert [s.spec for s in read_safetensors_header(tmp_path / "u.safetensors")] == list(
        manifest.tensors
    )


@pytest.mark.parametrize("bucket", [1, 7, 100, 1 << 20])
def test_chunks_are_buckets_of_the_tensors_in_file_order(tmp_path: Path, bucket: int) -> None:
    tensors = model_tensors()
    source = DirectorySource(write_model(tmp_path / "m", tensors))
    names = [t.name for t in source.tensors]
    assert sorted(names) == sorted(tensors)
    chunks = list(source.chunks(bucket))
    assert all(len(c) == bucket for c in chunks[:-1]) and 0 < len(chunks[-1]) <= bucket
    assert b"".join(chunks) == b"".join(raw(tensors[n]) for n in names)
    # The same bytes from the tensors themselves.
    assert b"".join(open_source(tensors).chunks(bucket)) == b"".join(
        raw(tensors[n]) for n in tensors
    )


def test_a_bucket_stays_as_read_until_as_many_more_as_buffers_are_read(tmp_path: Path) -> None:
    source = DirectorySource(write_model(tmp_path / "m", model_tensors()))
    want = list(source.chunks(7))
    held: list[memoryview] = []
    for i, view in enumerate(source.buckets(7, buffers=3)):
        held = [*held[-2:], view]
        assert [bytes(v) for v in held] == want[i + 1 - len(held) : i + 1]
    assert len(want) > 3


def test_unusable_sources_are_named(tmp_path: Path) -> None:
    with pytest.raises(WeightFileError, match="not a directory"):
        DirectorySource(tmp_path / "nope")
    with pytest.raises(WeightFileError, match=r"no \*\.safetensors files"):
        DirectorySource(tmp_path)
    save_file({"steps": torch.zeros(2, dtype=torch.int64)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(WeightFileError, match="steps: dtype I64 cannot be pushed"):
        DirectorySource(tmp_path)
    (tmp_path / "x.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{]")
    with pytest.raises(WeightFileError, match="not a safetensors file"):
        DirectorySource(tmp_path)
    with pytest.raises(WeightFileError, match=r"ids: dtype torch\.int64"):
        TensorSource({"ids": torch.zeros(2, dtype=torch.int64)})


def test_the_spool_refuses_what_did_not_arrive_whole(tmp_path: Path) -> None:
    manifest = WeightManifest(
        version=1, tensors=(TensorSpec(name="w", dtype=DType.FLOAT32, shape=(2,)),)
    )
    data = bytes(range(8))
    good = xxhash.xxh3_128(data).hexdigest()
    s = Spool(manifest, tmp_path / "a")
    s.write(data[:4])
    with pytest.raises(ValueError, match="truncated: the stream ended after 4 of 8 bytes"):
        s.finish(good)
    s = Spool(manifest, tmp_path / "b")
    with pytest.raises(ValueError, match="more than the 8 bytes"):
        s.write(data + b"x")
    s = Spool(manifest, tmp_path / "c")
    s.write(data)
    with pytest.raises(ValueError, match=r"checksum: the data hashes to \w{32} \(xxh3-128\)"):
        s.finish("0" * 32)
    s = Spool(manifest, tmp_path / "d")
    s.write(data)
    s.finish(good.upper())
    s = Spool(manifest, tmp_path / "e", checksum="sha256")
    s.write(data)
    with pytest.raises(ValueError, match="the sender said " + good):
        s.finish(good)
    s = Spool(manifest, tmp_path / "f", checksum="sha256")
    s.write(data)
    s.finish(hashlib.sha256(data).hexdigest())
    with pytest.raises(ValueError, match="unknown checksum algorithm 'md5'"):
        Spool(manifest, tmp_path / "g", checksum="md5")


def test_the_checksum_sees_every_bit_and_the_order() -> None:
    data = random.Random(0).randbytes(1 << 14)
    for algorithm in checksums.ALGORITHMS:
        digests = set()
        for variant in (data, _flip(data), data[1024:2048] + data[:1024] + data[2048:], data[:-1]):
            h = checksums.new_hasher(algorithm)
            h.update(variant)
            digests.add(h.hexdigest())
        assert len(digests) == 4, algorithm
    assert xxhash.xxh3_128(b"").hexdigest() == "99aa06d3014798d86001c324468d497f"


# -- pushes through the service -------------------------------------------------------------


async def test_push_a_model_directory_then_serve_it(tmp_path: Path) -> None:
    tensors = model_tensors()
    model = write_model(tmp_path / "m", tensors)
    engine = FakeEngine()
    async with Running(engine, spool_dir=tmp_path / "spool") as s:
        (tmp_path / "spool").mkdir()
        async with RolloutClient(s.target) as client:
            result = await client.push_weights(model, version=5, bucket_bytes=100)
            assert (result.version, result.bytes) == (5, sum(t.nbytes for t in PARAMS))
            assert result.receive_s > 0 and result.apply_s >= 0
            assert (await client.status()).version == 5
            assert {n: engine.weights[n] for n in tensors} == {
                n: raw(t) for n, t in tensors.items()
            }
            # And a state dict, in one bucket.
            newer = model_tensors(seed=2)
            assert (await client.push_weights(newer, version=6)).version == 6
            assert engine.weights == {n: raw(t) for n, t in newer.items()}
        await until(lambda: not any((tmp_path / "spool").iterdir()), "the spool to go")
        assert s.metric("rlfleet_rollout_weight_updates_total", result="applied") == 2
        assert s.metric("rlfleet_rollout_weight_update_bytes_total") == 2 * result.bytes
        assert s.metric("rlfleet_rollout_policy_version") == 6


async def test_a_spool_is_deleted_before_the_next_update_makes_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call answers before its spool is deleted (in the background); the next update
    waits for that, so the spool directory never holds two updates."""
    from rlfleet.rollout import servicer

    events: list[tuple[str, str]] = []
    release = threading.Event()
    real_mkdtemp, real_rmtree = servicer.tempfile.mkdtemp, servicer.shutil.rmtree

    def mkdtemp(**kwargs: Any) -> str:
        path = real_mkdtemp(**kwargs)
        events.append(("made", path))
        return path

    def held_rmtree(path: Path, ignore_errors: bool) -> None:
        release.wait(30)  # (a file system slow to delete, until the test lets it)
        real_rmtree(path, ignore_errors)
        events.append(("deleted", str(path)))

    monkeypatch.setattr(servicer.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(servicer.shutil, "rmtree", held_rmtree)
    (tmp_path / "spool").mkdir()
    try:
        async with Running(FakeEngine(), spool_dir=tmp_path / "spool") as s:
            async with RolloutClient(s.target) as client:
                await client.push_weights(model_tensors(), version=1)
                assert [e for e, _ in events] == ["made"], "answered before the spool went"
                second = asyncio.ensure_future(client.push_weights(model_tensors(2), version=2))
                await asyncio.sleep(0.5)
                assert [e for e, _ in events] == ["made"], "a second spool beside the first"
                release.set()
                assert (await second).version == 2
            await until(lambda: len(events) == 4, "the second spool to go")
    finally:
        release.set()
    (_, first), (_, gone), (_, made), (_, last) = events
    assert [e for e, _ in events] == ["made", "deleted", "made", "deleted"]
    assert gone == first != made == last
    assert list((tmp_path / "spool").iterdir()) == []


async def test_weights_pushed_mid_generation_tag_the_tokens_after_them(tmp_path: Path) -> None:
    engine = FakeEngine(step_s=0.01)
    async with Running(engine) as s, RolloutClient(s.target) as client:
        call = s.stub.Generate(generate_request(math_prompt("m", n=3), max_new_tokens=40))
        await until(lambda: engine.running == 3, "generation to start")
        await asyncio.sleep(0.1)
        await client.push_weights(model_tensors(), version=1)
        out = [c async for c in call]
    for c in out:
        spans = [(v.version, v.start, v.end) for v in c.versions]
        assert len(spans) == 2, spans
        (v0, s0, e0), (v1, s1, e1) = spans
        assert (v0, s0, v1, e1) == (0, 0, 1, 40) and e0 == s1 and 0 < s1 < 40
        assert len(c.token_ids) == 40


def stream(
    tensors: list[TensorSpec] | None = None,
    version: int = 1,
    data: bytes | None = None,
    digest: str | None = None,
    pieces: int = 3,
    legacy: bool = False,
) -> list[pb.WeightChunk]:
    """An UpdateWeights stream built by hand (default: a valid one for the fake engine, with
    an xxh3-128 checksum; ``legacy``: as senders sent it before the algorithm was named, a
    sha256 and no name)."""
    tensors = list(PARAMS) if tensors is None else tensors
    if data is None:
        data = bytes(i % 251 for i in range(sum(t.nbytes for t in tensors)))
    begin = manifest_to_pb(WeightManifest(version=version, tensors=tuple(tensors)))
    if not legacy:
        begin.checksum = "xxh3-128"
    out = [pb.WeightChunk(begin=begin)]
    step = max(1, -(-len(data) // pieces))
    out += [pb.WeightChunk(data=data[i : i + step]) for i in range(0, len(data), step)]
    out.append(_digest(data, legacy) if digest is None else _digest_message(digest, legacy))
    return out


def _digest(data: bytes, legacy: bool = False) -> pb.WeightChunk:
    """The last message of a stream of ``data``."""
    if legacy:
        return pb.WeightChunk(sha256=hashlib.sha256(data).hexdigest())
    return pb.WeightChunk(checksum=xxhash.xxh3_128(data).hexdigest())


def _digest_message(digest: str, legacy: bool = False) -> pb.WeightChunk:
    return pb.WeightChunk(sha256=digest) if legacy else pb.WeightChunk(checksum=digest)


def _named(algorithm: str) -> list[pb.WeightChunk]:
    """``stream()`` with ``algorithm`` named in its begin (its last message unchanged)."""
    out = stream()
    out[0].begin.checksum = algorithm
    return out


def _valid_bytes() -> bytes:
    return bytes(i % 251 for i in range(sum(t.nbytes for t in PARAMS)))


def _flip(data: bytes) -> bytes:
    """``data`` with one bit flipped."""
    return data[:10] + bytes([data[10] ^ 1]) + data[11:]


def _swap(data: bytes) -> bytes:
    """``data`` with its first two thirds (a sender's buckets) in the wrong order: the same
    bytes, the same length."""
    third = len(data) // 3
    return data[third : 2 * third] + data[:third] + data[2 * third :]


emb, up, norm = PARAMS
REFUSED: dict[str, tuple[Callable[[], list[pb.WeightChunk]], grpc.StatusCode, str]] = {
    "checksum mismatch": (
        lambda: stream(digest="ab" * 16),
        grpc.StatusCode.DATA_LOSS,
        "checksum: the data hashes to",
    ),
    "one bit flipped": (
        lambda: [*stream(data=_flip(_valid_bytes()))[:-1], _digest(_valid_bytes())],
        grpc.StatusCode.DATA_LOSS,
        "checksum: the data hashes to",
    ),
    "two buckets swapped": (
        lambda: [*stream(data=_swap(_valid_bytes()))[:-1], _digest(_valid_bytes())],
        grpc.StatusCode.DATA_LOSS,
        "checksum: the data hashes to",
    ),
    "sha256 mismatch (unnamed algorithm)": (
        lambda: [
            *stream(data=_flip(_valid_bytes()), legacy=True)[:-1],
            _digest(_valid_bytes(), True),
        ],
        grpc.StatusCode.DATA_LOSS,
        "checksum: the data hashes to",
    ),
    "unknown checksum algorithm": (
        lambda: _named("md5"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "begin.checksum: unknown algorithm 'md5' (one of xxh3-128, sha256)",
    ),
    "sha256 field with a named algorithm": (
        lambda: [*stream()[:-1], pb.WeightChunk(sha256=hashlib.sha256(_valid_bytes()).hexdigest())],
        grpc.StatusCode.INVALID_ARGUMENT,
        "sha256: superseded: this update's xxh3-128 goes in checksum",
    ),
    "checksum without a named algorithm": (
        lambda: [*stream(legacy=True)[:-1], _digest(_valid_bytes())],
        grpc.StatusCode.INVALID_ARGUMENT,
        "checksum: begin names no algorithm for it",
    ),
    "truncated data": (
        lambda: [*stream()[:2], stream()[-1]],
        grpc.StatusCode.DATA_LOSS,
        "truncated: the stream ended after",
    ),
    "ends before its checksum": (
        lambda: stream()[:-1],
        grpc.StatusCode.DATA_LOSS,
        "truncated: the stream ended before its checksum",
    ),
    "more bytes than announced": (
        lambda: stream(data=_valid_bytes() + b"xx"),
        grpc.StatusCode.DATA_LOSS,
        "data: more than the",
    ),
    "mis-shaped": (
        lambda: stream([emb, TensorSpec(name=up.name, dtype=up.dtype, shape=(8, 16)), norm]),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"begin.tensors: {up.name}: shape (8, 16)",
    ),
    "wrong dtype": (
        lambda: stream([emb, up, TensorSpec(name=norm.name, dtype=DType.FLOAT16, shape=(8,))]),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"begin.tensors: {norm.name}: dtype float16",
    ),
    "unknown tensor": (
        lambda: stream([emb, TensorSpec(name="lm_head.bias", dtype=DType.FLOAT32, shape=(8,))]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "begin.tensors: lm_head.bias: not a parameter",
    ),
    "dtype missing": (
        lambda: [
            pb.WeightChunk(
                begin=pb.WeightUpdateBegin(version=1, tensors=[pb.TensorSpec(name="w", shape=[2])])
            )
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "begin.tensors[0].dtype: missing",
    ),
    "old version": (
        lambda: stream(version=0),
        grpc.StatusCode.FAILED_PRECONDITION,
        "begin.version: 0 is not newer than the version serving (0)",
    ),
    "no begin": (
        lambda: stream()[1:],
        grpc.StatusCode.INVALID_ARGUMENT,
        "begin: missing from the first message",
    ),
    "empty stream": (lambda: [], grpc.StatusCode.INVALID_ARGUMENT, "begin: missing"),
    "begin twice": (
        lambda: [*stream()[:2], stream()[0], *stream()[2:]],
        grpc.StatusCode.INVALID_ARGUMENT,
        "begin: only in the first message",
    ),
    "data after the checksum": (
        lambda: [*stream(), pb.WeightChunk(data=b"x")],
        grpc.StatusCode.INVALID_ARGUMENT,
        "checksum: only in the last message",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
async def test_a_refused_stream_leaves_the_old_weights_serving(tmp_path: Path, case: str) -> None:
    make, code, says = REFUSED[case]
    engine = FakeEngine()
    before = dict(engine.weights)
    (tmp_path / "spool").mkdir()
    async with Running(engine, spool_dir=tmp_path / "spool") as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.UpdateWeights(iter(make()), timeout=10)
        assert err.value.code() == code, err.value.details()
        assert err.value.details().startswith(says), err.value.details()
        assert engine.updates == [] and engine.weights == before
        assert (await s.stub.Status(pb.StatusRequest(), timeout=10)).version == 0
        (c,) = [c async for c in s.stub.Generate(generate_request(math_prompt("m")), timeout=10)]
        assert [v.version for v in c.versions] == [0]
        await until(lambda: not any((tmp_path / "spool").iterdir()), "the spool to go")
        assert s.metric("rlfleet_rollout_weight_updates_total", result="rejected") == 1
        assert await s.health() == 1  # SERVING


async def test_the_manifest_is_checked_before_any_data_is_taken() -> None:
    sent_data = asyncio.Event()

    async def begin_then_wait() -> AsyncIterator[pb.WeightChunk]:
        bad = TensorSpec(name="nope", dtype=DType.FLOAT32, shape=(1 << 30,))  # 4 GiB announced
        yield stream([bad], data=b"")[0]
        await asyncio.sleep(30)
        sent_data.set()

    async with Running(FakeEngine()) as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(s.stub.UpdateWeights(begin_then_wait()), 10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "nope" in err.value.details()
        assert not sent_data.is_set()


async def test_the_client_refusals_are_typed(tmp_path: Path) -> None:
    async with Running(FakeEngine()) as s, RolloutClient(s.target) as client:
        await client.push_weights(model_tensors(), version=2)
        with pytest.raises(WeightsRejected) as err:
            await client.push_weights(model_tensors(), version=2)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(WeightsRejected) as err:
            await client.push_weights({"x": torch.zeros(3)}, version=3)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "x:" in str(err.value)


async def test_a_client_that_leaves_mid_stream_changes_nothing(tmp_path: Path) -> None:
    engine = FakeEngine()
    (tmp_path / "spool").mkdir()
    half = stream(pieces=4)[:3]

    async def then_hang() -> AsyncIterator[pb.WeightChunk]:
        for m in half:
            yield m
        await asyncio.sleep(30)

    async with Running(engine, spool_dir=tmp_path / "spool") as s:
        call = s.stub.UpdateWeights(then_hang())
        await until(lambda: any((tmp_path / "spool").iterdir()), "the spool to start")
        call.cancel()
        await until(lambda: not any((tmp_path / "spool").iterdir()), "the spool to go")
        assert engine.updates == [] and engine.version == 0


async def test_an_engine_that_fails_to_apply_keeps_serving_the_old_version(tmp_path: Path) -> None:
    engine = FakeEngine(apply_fail=EngineError("out of memory loading the update"))
    (tmp_path / "spool").mkdir()
    async with Running(engine, spool_dir=tmp_path / "spool") as s:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.UpdateWeights(iter(stream()), timeout=10)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert engine.version == 0
        await until(lambda: not any((tmp_path / "spool").iterdir()), "the spool to go")
        assert s.metric("rlfleet_rollout_weight_updates_total", result="failed") == 1


async def test_the_receiver_spools_as_data_arrives_holding_about_one_chunk(tmp_path: Path) -> None:
    """16 MiB pushed in 256 KiB buckets: each bucket is on disk before the next is sent, and
    the Python heap of both ends together never holds more than a few buckets."""
    bucket = 256 << 10
    total = 16 << 20
    big = [TensorSpec(name=f"w{i}", dtype=DType.FLOAT32, shape=(1 << 20,)) for i in range(4)]

    class BigEngine(FakeEngine):
        def check_manifest(self, manifest: WeightManifest) -> None:
            pass

        async def update_weights(self, update: object) -> None:
            self.version = 1

    spool = tmp_path / "spool"
    spool.mkdir()

    def on_disk() -> int:
        files = list(spool.rglob("*.safetensors"))
        return files[0].stat().st_size if files else 0

    class Source(WeightSource):
        """Generated bytes: nothing of the model is held anywhere."""

        def read(self, index: int, start: int, length: int) -> bytes:
            return bytes([index]) * length

    async with Running(BigEngine(), spool_dir=spool) as s:
        chunks = iter_weight_chunks(Source(big), 1, bucket)
        header = 0

        async def paced() -> AsyncIterator[pb.WeightChunk]:
            nonlocal header
            sent = 0
            for m in chunks:
                yield m
                if m.HasField("begin"):
                    await until(lambda: on_disk() > 0, "the header")
                    header = on_disk()
                sent += len(m.data)
                want = header + sent
                await until(lambda w=want: on_disk() == w, f"{sent} bytes on disk")  # type: ignore[misc]

        tracemalloc.start()
        try:
            reply = await s.stub.UpdateWeights(paced(), timeout=60)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert reply.bytes == total == sum(t.nbytes for t in big)
    assert peak < 8 * bucket, f"peak {peak} bytes traced for {bucket}-byte buckets"


# -- the data plane: the bytes over a one-shot TCP connection ---------------------------------


async def test_a_push_over_the_data_plane_then_serve_it(tmp_path: Path) -> None:
    tensors = model_tensors()
    engine = FakeEngine()
    (tmp_path / "spool").mkdir()
    forced = ClientConfig(weight_transport="data-plane")
    async with Running(engine, spool_dir=tmp_path / "spool") as s:
        async with RolloutClient(s.target, forced) as client:
            result = await client.push_weights(write_model(tmp_path / "m", tensors), 5, 100)
            assert (result.version, result.bytes) == (5, sum(t.nbytes for t in PARAMS))
            assert engine.weights == {n: raw(t) for n, t in tensors.items()}
            newer = model_tensors(seed=2)
            assert (await client.push_weights(newer, version=6)).version == 6
            assert engine.weights == {n: raw(t) for n, t in newer.items()}
            assert (await client.status()).version == 6
        await until(lambda: not any((tmp_path / "spool").iterdir()), "the spool to go")
        assert s.metric("rlfleet_rollout_weight_updates_total", result="applied") == 2


async def test_without_a_data_plane_offered_pushes_go_in_messages(tmp_path: Path) -> None:
    engine = FakeEngine()
    async with Running(engine, data_plane=False) as s:
        async with RolloutClient(s.target) as client:
            assert (await client.push_weights(model_tensors(), version=1)).version == 1
        async with RolloutClient(s.target, ClientConfig(weight_transport="data-plane")) as c:
            with pytest.raises(DataPlaneUnavailable, match="no data plane offered"):
                await c.push_weights(model_tensors(seed=2), version=2)
        assert engine.version == 1


async def test_a_data_connection_that_cannot_be_opened_falls_back_to_messages(
    tmp_path: Path,
) -> None:
    engine = FakeEngine()
    (tmp_path / "spool").mkdir()
    async with Running(engine, spool_dir=tmp_path / "spool", data_timeout_s=60) as s:
        # Offered on an address the client does not reach the server at: refused.
        s.service.data_host = "127.0.0.2"
        async with RolloutClient(s.target) as client:
            assert (await client.push_weights(model_tensors(), version=1)).version == 1
            assert (await client.push_weights(model_tensors(seed=2), version=2)).version == 2
        async with RolloutClient(s.target, ClientConfig(weight_transport="data-plane")) as c:
            with pytest.raises(DataPlaneUnavailable, match=r"data connection to 127\.0\.0\.1"):
                await c.push_weights(model_tensors(seed=3), version=3)
        assert engine.version == 2
        assert engine.weights == {n: raw(t) for n, t in model_tensors(seed=2).items()}
        await until(lambda: not any((tmp_path / "spool").iterdir()), "the spool to go")


def test_the_data_plane_needs_a_target_that_names_one_server() -> None:
    assert one_server_host("10.0.0.1:50052") == "10.0.0.1"
    assert one_server_host("dns:///rollout-0.rollout.ns.svc:50052") == "rollout-0.rollout.ns.svc"
    assert one_server_host("[::1]:50052") == "::1"
    assert one_server_host("10.0.0.1:1,10.0.0.2:1") is None
    assert one_server_host("unix:/run/rollout.sock") is None
    with pytest.raises(ValueError, match="the data plane has no TLS"):
        ClientConfig(weight_transport="data-plane", tls_ca=Path("ca.pem"))


class HandCall:
    """An UpdateWeights call that asks for the data plane, driven by hand: ``send`` puts a
    message on the call (None ends it); ``port`` and ``token`` are what the server offered."""

    def __init__(self, s: Running, first: pb.WeightChunk) -> None:
        self.queue: asyncio.Queue[pb.WeightChunk | None] = asyncio.Queue()
        first.begin.data_plane = True
        self.queue.put_nowait(first)
        self.call = s.stub.UpdateWeights(self._messages(), timeout=30)
        self.port = 0
        self.token = b""

    async def _messages(self) -> AsyncIterator[pb.WeightChunk]:
        while (m := await self.queue.get()) is not None:
            yield m

    async def offered(self) -> bool:
        metadata = dict(await self.call.initial_metadata() or ())
        if PORT_KEY not in metadata:
            return False
        self.port = int(str(metadata[PORT_KEY]))
        self.token = bytes.fromhex(str(metadata[TOKEN_KEY]))
        return True

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def send(self, message: pb.WeightChunk | None) -> None:
        self.queue.put_nowait(message)


def _over_connection(payload: bytes, *, close: bool = True) -> Callable[[HandCall], Any]:
    """Send ``payload`` over the data connection (then close it, or leave it open)."""

    def act(h: HandCall) -> socket.socket:
        conn = h.connect()
        conn.sendall(payload)
        if close:
            conn.close()
        return conn

    return act


DATA_PLANE_REFUSED: dict[str, tuple[list[Callable[[HandCall], Any]], grpc.StatusCode, str]] = {
    "wrong token": (
        [lambda h: _over_connection(bytes(32) + _valid_bytes())(h)],
        grpc.StatusCode.DATA_LOSS,
        "data connection: it did not present the update's token",
    ),
    "truncated connection": (
        [
            lambda h: _over_connection(h.token + _valid_bytes()[:50])(h),
            lambda h: h.send(_digest(_valid_bytes())),
            lambda h: h.send(None),
        ],
        grpc.StatusCode.DATA_LOSS,
        "truncated: the data connection ended after 50 of",
    ),
    "more bytes than announced": (
        [lambda h: _over_connection(h.token + _valid_bytes() + b"xx")(h)],
        grpc.StatusCode.DATA_LOSS,
        "data: more than the",
    ),
    "checksum mismatch": (
        [
            lambda h: _over_connection(h.token + _valid_bytes())(h),
            lambda h: h.send(pb.WeightChunk(checksum="ab" * 16)),
            lambda h: h.send(None),
        ],
        grpc.StatusCode.DATA_LOSS,
        "checksum: the data hashes to",
    ),
    "one bit flipped": (
        [
            lambda h: _over_connection(h.token + _flip(_valid_bytes()))(h),
            lambda h: h.send(_digest(_valid_bytes())),
            lambda h: h.send(None),
        ],
        grpc.StatusCode.DATA_LOSS,
        "checksum: the data hashes to",
    ),
    "two buckets swapped": (
        [
            lambda h: _over_connection(h.token + _swap(_valid_bytes()))(h),
            lambda h: h.send(_digest(_valid_bytes())),
            lambda h: h.send(None),
        ],
        grpc.StatusCode.DATA_LOSS,
        "checksum: the data hashes to",
    ),
    "sha256 field with a named algorithm": (
        [
            lambda h: _over_connection(h.token + _valid_bytes())(h),
            lambda h: h.send(_digest(_valid_bytes(), legacy=True)),
        ],
        grpc.StatusCode.INVALID_ARGUMENT,
        "sha256: superseded: this update's xxh3-128 goes in checksum",
    ),
    "ends before its checksum": (
        [lambda h: _over_connection(h.token + _valid_bytes())(h), lambda h: h.send(None)],
        grpc.StatusCode.DATA_LOSS,
        "truncated: the stream ended before its checksum",
    ),
    "ends before its data": (
        [lambda h: h.send(None)],
        grpc.StatusCode.DATA_LOSS,
        "truncated: the stream ended before its checksum",
    ),
    "data in messages": (
        [lambda h: h.send(pb.WeightChunk(data=_valid_bytes()))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "data: comes over the data connection, never in messages",
    ),
    "no connection comes": (
        [],
        grpc.StatusCode.DATA_LOSS,
        "data connection: none came within 0.5 s",
    ),
    "the connection goes quiet": (
        [lambda h: _over_connection(h.token + _valid_bytes()[:50], close=False)(h)],
        grpc.StatusCode.DATA_LOSS,
        "data connection: nothing arrived for 0.5 s",
    ),
}


@pytest.mark.parametrize("case", DATA_PLANE_REFUSED)
async def test_a_refused_data_connection_leaves_the_old_weights_serving(
    tmp_path: Path, case: str
) -> None:
    acts, code, says = DATA_PLANE_REFUSED[case]
    engine = FakeEngine()
    before = dict(engine.weights)
    (tmp_path / "spool").mkdir()
    opened: list[socket.socket] = []
    async with Running(engine, spool_dir=tmp_path / "spool", data_timeout_s=0.5) as s:
        h = HandCall(s, stream()[0])
        assert await h.offered()
        try:
            for act in acts:
                if isinstance(conn := act(h), socket.socket):
                    opened.append(conn)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(h.call, 10)
        finally:
            for conn in opened:
                conn.close()
        assert err.value.code() == code, err.value.details()
        assert err.value.details().startswith(says), err.value.details()
        assert engine.updates == [] and engine.weights == before
        assert (await s.stub.Status(pb.StatusRequest(), timeout=10)).version == 0
        (c,) = [c async for c in s.stub.Generate(generate_request(math_prompt("m")), timeout=10)]
        assert [v.version for v in c.versions] == [0]
        await until(lambda: not any((tmp_path / "spool").iterdir()), "the spool to go")
        assert s.metric("rlfleet_rollout_weight_updates_total", result="rejected") == 1
        assert await s.health() == 1  # SERVING
        # The port took one connection and is closed.
        with pytest.raises(ConnectionRefusedError):
            h.connect().close()


async def test_a_hand_made_data_plane_push_is_applied(tmp_path: Path) -> None:
    """The wire contract as the proto states it, without the client."""
    engine = FakeEngine()
    async with Running(engine) as s:
        h = HandCall(s, stream()[0])
        assert await h.offered() and len(h.token) == 32
        _over_connection(h.token + _valid_bytes())(h)
        h.send(_digest(_valid_bytes()))
        h.send(None)
        reply = await asyncio.wait_for(h.call, 10)
        assert reply.version == 1 and engine.version == 1
        assert b"".join(engine.weights[t.name] for t in PARAMS) == _valid_bytes()


@pytest.mark.parametrize("transport", ["messages", "data plane"])
@pytest.mark.parametrize("algorithm", ["sha256", "sha256 (unnamed)"])
async def test_a_sha256_checksum_is_still_accepted(algorithm: str, transport: str) -> None:
    """From senders that name sha256, or no algorithm at all (they came before it was
    named and put the digest in ``sha256``)."""
    legacy = algorithm.endswith("(unnamed)")
    first = _named("sha256")[0] if not legacy else stream(legacy=True)[0]
    last = (
        _digest(_valid_bytes(), legacy=True)
        if legacy
        else pb.WeightChunk(checksum=hashlib.sha256(_valid_bytes()).hexdigest())
    )
    engine = FakeEngine()
    async with Running(engine) as s:
        if transport == "messages":
            reply = await s.stub.UpdateWeights(iter([first, *stream()[1:-1], last]), timeout=10)
        else:
            h = HandCall(s, first)
            assert await h.offered()
            _over_connection(h.token + _valid_bytes())(h)
            h.send(last)
            h.send(None)
            reply = await asyncio.wait_for(h.call, 10)
        assert reply.version == 1 and engine.version == 1
        assert b"".join(engine.weights[t.name] for t in PARAMS) == _valid_bytes()


async def test_a_client_that_dies_mid_transfer_changes_nothing(tmp_path: Path) -> None:
    """The call cancelled with the connection still open: the server lets go at once (not
    after its data timeout) and removes the spool."""
    engine = FakeEngine()
    (tmp_path / "spool").mkdir()
    async with Running(engine, spool_dir=tmp_path / "spool", data_timeout_s=600) as s:
        h = HandCall(s, stream()[0])
        assert await h.offered()
        conn = _over_connection(h.token + _valid_bytes()[:50], close=False)(h)
        try:
            await until(lambda: any((tmp_path / "spool").iterdir()), "the spool to start")
            h.call.cancel()
            await until(lambda: not any((tmp_path / "spool").iterdir()), "the spool to go")
            assert engine.updates == [] and engine.version == 0
            # The server closed its end (an end of file, or a reset when bytes were unread).
            conn.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                assert conn.recv(1) == b""
        finally:
            conn.close()
        async with RolloutClient(s.target) as client:  # and takes the next push
            assert (await client.push_weights(model_tensors(), version=1)).version == 1


async def test_a_server_with_tls_never_offers_the_data_plane(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test certificate (apt-get install openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    engine = FakeEngine()
    srv, _ = build_rollout_server(
        ServerConfig(port=0, tls_cert=cert, tls_key=key),
        ServiceConfig(),
        engine,
        None,
        CollectorRegistry(),
    )
    await srv.start()
    target = f"127.0.0.1:{srv.port}"
    try:
        creds = grpc.ssl_channel_credentials(cert.read_bytes())
        async with grpc.aio.secure_channel(target, creds) as channel:
            stream_pb = stream()
            stream_pb[0].begin.data_plane = True
            call = pb_grpc.RolloutStub(channel).UpdateWeights(iter(stream_pb), timeout=10)
            metadata = dict(await call.initial_metadata() or ())
            assert PORT_KEY not in metadata and TOKEN_KEY not in metadata
            assert (await call).version == 1  # the data came in messages
        async with RolloutClient(target, ClientConfig(tls_ca=cert)) as client:
            assert (await client.push_weights(model_tensors(), version=2)).version == 2
    finally:
        await srv.server.stop(0)


async def test_a_data_plane_push_holds_a_few_buffers_at_a_time(tmp_path: Path) -> None:
    """16 MiB over the data connection with 256 KiB buckets and receive buffers: the Python
    heap of both ends together never holds more than a few of them."""
    bucket = 256 << 10
    big = [TensorSpec(name=f"w{i}", dtype=DType.FLOAT32, shape=(1 << 20,)) for i in range(4)]

    class BigEngine(FakeEngine):
        def check_manifest(self, manifest: WeightManifest) -> None:
            pass

        async def update_weights(self, update: object) -> None:
            self.version = 1

    class Source(WeightSource):
        def read(self, index: int, start: int, length: int) -> bytes:
            return bytes([index]) * length

    config = ClientConfig(weight_transport="data-plane")
    async with (
        Running(BigEngine(), spool_dir=tmp_path, data_buffer_bytes=bucket) as s,
        RolloutClient(s.target, config) as client,
    ):
        tracemalloc.start()
        try:
            result = await client.push_weights(Source(big), 1, bucket)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.bytes == 16 << 20
    assert peak < 8 * bucket, f"peak {peak} bytes traced for {bucket}-byte buckets"


@pytest.mark.parametrize("case", ["mis-shaped", "wrong dtype", "unknown tensor", "old version"])
async def test_a_manifest_refused_on_the_data_plane_is_refused_before_any_offer(
    tmp_path: Path, case: str
) -> None:
    make, code, says = REFUSED[case]
    first = make()[0]
    first.begin.data_plane = True
    engine = FakeEngine()
    async with Running(engine) as s:
        call = s.stub.UpdateWeights(iter([first]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert (err.value.code(), err.value.details()[: len(says)]) == (code, says)
        assert PORT_KEY not in dict(await call.initial_metadata() or ())
        assert engine.updates == [] and engine.version == 0
