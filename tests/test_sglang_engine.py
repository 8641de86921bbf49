"""The sglang engine against faithful fakes of the pinned SGLang (tests/sglang_fakes.py):
gRPC generation (the default surface) and the HTTP fallback, cancellation reaching SGLang
as an abort, the weight-update sequence and versions, SGLang's errors as clear errors, and
the server process's start, health wait and stop as real processes.

In-process fakes (inspectable) run beside a placeholder server process; the process tests
start tests/sglang_fake_server.py as the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from sglang_fakes import FakeHttpSglang, FakeScheduler, fake_logprob, fake_token, serve_scheduler

from rlfleet.rollout.engine import EngineError, WeightMismatch, WeightUpdate
from rlfleet.rollout.records import (
    DType,
    FinishReason,
    SampleRequest,
    SamplingParams,
    TensorSpec,
    TokenChunk,
    WeightManifest,
)
from rlfleet.rollout.sglang_engine import (
    SglangEngine,
    SglangEngineConfig,
    launch_argv,
    stream_event_chunks,
)
from rlfleet.rollout.sglang_http import SglangRequestError

TESTS = Path(__file__).resolve().parent
FAKE_SERVER = (sys.executable, str(TESTS / "sglang_fake_server.py"))
# A server process that accepts any flags and does nothing: the in-process fakes answer.
PLACEHOLDER = (sys.executable, "-c", "import time; time.sleep(600)")

PARAMS: dict[str, tuple[str, tuple[int, ...]]] = {
    "model.embed_tokens.weight": ("F32", (50, 8)),
    "model.layers.0.mlp.up_proj.weight": ("BF16", (16, 8)),
    "lm_head.weight": ("F32", (50, 8)),
}

pytestmark = pytest.mark.timeout(60)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    sizes = {"F32": 4, "BF16": 2, "F16": 2}
    header: dict[str, object] = {}
    offset = 0
    for name, (code, shape) in tensors.items():
        n = sizes[code]
        for d in shape:
            n *= d
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    d = tmp_path_factory.mktemp("tiny-model")
    vocab = {w: i for i, w in enumerate(["<eos>", *[chr(ord("a") + i) for i in range(26)]])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<eos>", "tokenizer_class": "PreTrainedTokenizerFast"})
    )
    (d / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 50}))
    write_safetensors(d / "model.safetensors", PARAMS)
    return d


def manifest(version: int, **override: tuple[str, tuple[int, ...]]) -> WeightManifest:
    codes = {"F32": DType.FLOAT32, "BF16": DType.BFLOAT16, "F16": DType.FLOAT16}
    tensors = {**PARAMS, **override}
    return WeightManifest(
        version=version,
        tensors=tuple(TensorSpec(name=n, dtype=codes[c], shape=s) for n, (c, s) in tensors.items()),
    )


def sample(key: str = "p0/0/c", *, max_new_tokens: int = 5, **kw: object) -> SampleRequest:
    return SampleRequest(
        key=key,
        prompt_token_ids=(3, 4, 5),
        sampling=SamplingParams(max_new_tokens=max_new_tokens, **kw),  # type: ignore[arg-type]
    )


async def collect(it: AsyncIterator[TokenChunk]) -> list[TokenChunk]:
    return [c async for c in it]


def tokens(chunks: list[TokenChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie has exited but waits for its parent: as good as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


# -- in-process fakes ------------------------------------------------------------------------


@pytest.fixture
async def grpc_fake(
    model_dir: Path, tmp_path: Path
) -> AsyncIterator[tuple[SglangEngine, FakeScheduler]]:
    fake = FakeScheduler()
    server, port = await serve_scheduler(fake, "127.0.0.1", 0)
    config = SglangEngineConfig(
        model_dir=model_dir, launcher=PLACEHOLDER, grpc_port=port, work_dir=tmp_path / "work",
        start_timeout_s=10, request_timeout_s=10,
    )  # fmt: skip
    engine = await SglangEngine.start(config)
    try:
        yield engine, fake
    finally:
        await engine.close()
        await server.stop(None)


@pytest.fixture
def http_server() -> Iterator[FakeHttpSglang]:
    fake = FakeHttpSglang(step_s=0.003).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
async def http_fake(
    model_dir: Path, tmp_path: Path, http_server: FakeHttpSglang
) -> AsyncIterator[tuple[SglangEngine, FakeHttpSglang]]:
    config = SglangEngineConfig(
        model_dir=model_dir, surface="http", launcher=PLACEHOLDER, port=http_server.port,
        work_dir=tmp_path / "work", start_timeout_s=10, request_timeout_s=10,
    )  # fmt: skip
    engine = await SglangEngine.start(config)
    try:
        yield engine, http_server
    finally:
        await engine.close()


def expected(n: int, version: str = "0") -> list[int]:
    return [fake_token([3, 4, 5], i, version, None) for i in range(n)]


async def test_grpc_generation_streams_tokens_logprobs_and_version(
    grpc_fake: tuple[SglangEngine, FakeScheduler],
) -> None:
    engine, fake = grpc_fake
    chunks = await collect(engine.generate(sample(max_new_tokens=6, temperature=0.0)))
    assert tokens(chunks) == expected(6)
    assert [lp for c in chunks for lp in c.logprobs] == pytest.approx(
        [fake_logprob(t, i) for i, t in enumerate(expected(6))]
    )
    # The tokens come from the chunks alone: Complete repeats the last one.
    assert chunks[-1].finish_reason is FinishReason.LENGTH and chunks[-1].token_ids == ()
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert {c.version for c in chunks} == {0}
    (req,) = fake.requests
    assert list(req.tokenized.input_ids) == [3, 4, 5]
    assert req.return_logprob and req.stream and req.logprob_start_len == -1
    sp = req.sampling_params
    assert (sp.max_new_tokens, sp.temperature, sp.top_p, sp.top_k, sp.n) == (6, 0.0, 1.0, -1, 1)
    assert req.request_id.startswith("p0/0/c#")


async def test_grpc_stop_token_ends_with_stop(
    grpc_fake: tuple[SglangEngine, FakeScheduler],
) -> None:
    engine, _ = grpc_fake
    third = expected(3)[2]
    chunks = await collect(engine.generate(sample(max_new_tokens=10, stop_token_ids=(third,))))
    assert tokens(chunks)[-1] == third and chunks[-1].finish_reason is FinishReason.STOP


async def test_grpc_cancel_aborts_the_request(
    grpc_fake: tuple[SglangEngine, FakeScheduler],
) -> None:
    engine, fake = grpc_fake
    fake.step_s = 0.01
    stream = engine.generate(sample(max_new_tokens=1000))
    got = [await anext(stream), await anext(stream)]
    assert tokens(got) == expected(2)
    assert engine.status().running == 1
    await stream.aclose()
    assert fake.aborts[:1] == [fake.requests[0].request_id]
    assert engine.status().running == 0
    for _ in range(100):
        if not fake._active:
            break
        await asyncio.sleep(0.01)
    assert not fake._active


async def test_grpc_error_is_a_clear_engine_error(
    grpc_fake: tuple[SglangEngine, FakeScheduler],
) -> None:
    engine, fake = grpc_fake
    fake.fail = (grpc.StatusCode.RESOURCE_EXHAUSTED, "The waiting queue is full")
    with pytest.raises(
        EngineError, match="Generate: RESOURCE_EXHAUSTED: The waiting queue is full"
    ):
        await collect(engine.generate(sample()))


async def test_grpc_surface_refuses_weight_updates(
    grpc_fake: tuple[SglangEngine, FakeScheduler], tmp_path: Path
) -> None:
    engine, _ = grpc_fake
    update = tmp_path / "u.safetensors"
    write_safetensors(update, PARAMS)
    with pytest.raises(EngineError, match=r"smg-grpc-mode.*surface http"):
        await engine.update_weights(WeightUpdate(manifest=manifest(1), path=update))
    assert engine.status().version == 0


async def test_grpc_status(grpc_fake: tuple[SglangEngine, FakeScheduler], model_dir: Path) -> None:
    engine, _ = grpc_fake
    st = engine.status()
    assert (st.engine, st.model, st.version, st.running) == ("sglang", str(model_dir), 0, 0)
    assert "grpc" in st.device


async def test_http_generation_and_per_sample_seeds(
    http_fake: tuple[SglangEngine, FakeHttpSglang],
) -> None:
    engine, fake = http_fake
    greedy = await collect(engine.generate(sample(max_new_tokens=5, temperature=0.0)))
    assert tokens(greedy) == expected(5)
    assert [lp for c in greedy for lp in c.logprobs] == pytest.approx(
        [fake_logprob(t, i) for i, t in enumerate(expected(5))]
    )
    assert greedy[-1].finish_reason is FinishReason.LENGTH and greedy[-1].token_ids
    assert {c.version for c in greedy} == {0}
    a = await collect(engine.generate(sample("p/0", max_new_tokens=8)))
    b = await collect(engine.generate(sample("p/1", max_new_tokens=8)))
    seeded = await collect(engine.generate(sample("p/2", max_new_tokens=8, seed=7)))
    again = await collect(engine.generate(sample("p/3", max_new_tokens=8, seed=7)))
    seeds = [body["sampling_params"]["sampling_seed"] for body in fake.generate_bodies[1:]]
    assert seeds[0] != seeds[1] and seeds[2:] == [7, 7]
    assert tokens(a) != tokens(b) and tokens(seeded) == tokens(again)
    body = fake.generate_bodies[0]
    assert body["input_ids"] == [3, 4, 5] and body["return_logprob"] and body["stream"]
    assert body["sampling_params"]["max_new_tokens"] == 5


async def test_http_cancel_aborts_the_request(
    http_fake: tuple[SglangEngine, FakeHttpSglang],
) -> None:
    engine, fake = http_fake
    stream = engine.generate(sample(max_new_tokens=10_000))
    await anext(stream)
    await stream.aclose()
    rid = fake.generate_bodies[0]["rid"]
    assert ("/abort_request", {"rid": rid}) in fake.calls
    for _ in range(200):
        if not fake.active:
            break
        await asyncio.sleep(0.01)
    assert not fake.active


async def test_http_weight_update_sequence_and_versions(
    http_fake: tuple[SglangEngine, FakeHttpSglang], tmp_path: Path
) -> None:
    engine, fake = http_fake
    update = tmp_path / "u.safetensors"
    write_safetensors(update, dict(list(PARAMS.items())[:1]))
    stream = engine.generate(sample(max_new_tokens=200, temperature=0.0))
    first = [await anext(stream) for _ in range(3)]
    partial = WeightManifest(version=1, tensors=manifest(1).tensors[:1])
    await engine.update_weights(WeightUpdate(manifest=partial, path=update))
    rest = await collect(stream)
    chunks = first + rest
    assert fake.routes() == [
        "/pause_generation",
        "/update_weights_from_disk",
        "/continue_generation",
    ]
    pause, disk = fake.calls[0][1], fake.calls[1][1]
    assert pause == {"mode": "retract"}
    assert disk["weight_version"] == "1" and disk["flush_cache"] is True
    assert fake.staged == [
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    ]
    assert not Path(disk["model_path"]).exists()  # staged, loaded, removed
    # Every token carries the version that produced it; the sequence resumed on the new one.
    versions = [c.version for c in chunks for _ in c.token_ids]
    assert versions[:3] == [0, 0, 0] and versions[-1] == 1
    switch = versions.index(1)
    assert versions == [0] * switch + [1] * (len(versions) - switch)
    ids = tokens(chunks)
    assert ids[:switch] == expected(switch, "0")
    assert ids[switch:] == [fake_token([3, 4, 5], i, "1", None) for i in range(switch, 200)]
    assert engine.status().version == 1
    after = await collect(engine.generate(sample(max_new_tokens=3, temperature=0.0)))
    assert tokens(after) == expected(3, "1") and {c.version for c in after} == {1}


async def test_http_weight_update_failure_keeps_serving(
    http_fake: tuple[SglangEngine, FakeHttpSglang], tmp_path: Path
) -> None:
    engine, fake = http_fake
    update = tmp_path / "u.safetensors"
    write_safetensors(update, PARAMS)
    fake.fail_update = "Failed to update weights: size mismatch.\nRolling back to original weights."
    with pytest.raises(
        SglangRequestError, match="update_weights_from_disk: HTTP 400: Failed to update"
    ):
        await engine.update_weights(WeightUpdate(manifest=manifest(1), path=update))
    assert fake.routes()[-1] == "/continue_generation" and not fake.paused
    assert engine.status().version == 0
    greedy = sample(max_new_tokens=3, temperature=0.0)
    assert tokens(await collect(engine.generate(greedy))) == expected(3)


async def test_mismatched_manifest_is_refused_before_any_call(
    http_fake: tuple[SglangEngine, FakeHttpSglang], tmp_path: Path
) -> None:
    engine, fake = http_fake
    cases = {
        "nope.weight: not a parameter": manifest(1, **{"nope.weight": ("F32", (1,))}),
        r"lm_head.weight: shape \[8, 50\]": manifest(1, **{"lm_head.weight": ("F32", (8, 50))}),
        "up_proj.weight: dtype float32 does not match the model's bfloat16": manifest(
            1, **{"model.layers.0.mlp.up_proj.weight": ("F32", (16, 8))}
        ),
    }
    for message, bad in cases.items():
        with pytest.raises(WeightMismatch, match=message):
            engine.check_manifest(bad)
        with pytest.raises(WeightMismatch):
            await engine.update_weights(WeightUpdate(manifest=bad, path=tmp_path / "x"))
    assert fake.calls == []
    engine.check_manifest(manifest(2))


async def test_nccl_update_sequence(http_fake: tuple[SglangEngine, FakeHttpSglang]) -> None:
    engine, fake = http_fake
    with pytest.raises(SglangRequestError, match="init_weights_update_group` first"):
        await engine.update_weights_from_distributed(manifest(3))
    assert fake.routes() == [
        "/pause_generation", "/begin_weight_update", "/update_weights_from_distributed",
        "/end_weight_update", "/continue_generation",
    ]  # fmt: skip
    assert not fake.session_open and not fake.paused and engine.status().version == 0
    fake.calls.clear()
    await engine.init_weights_update_group(
        master_address="10.0.0.1", master_port=29600, rank_offset=1, world_size=2
    )
    await engine.update_weights_from_distributed(manifest(3))
    assert fake.routes() == [
        "/init_weights_update_group", "/pause_generation", "/begin_weight_update",
        "/update_weights_from_distributed", "/end_weight_update", "/continue_generation",
    ]  # fmt: skip
    init, upd = fake.calls[0][1], fake.calls[3][1]
    assert init == {
        "master_address": "10.0.0.1", "master_port": 29600, "rank_offset": 1, "world_size": 2,
        "group_name": "weight_update_group", "backend": "nccl",
    }  # fmt: skip
    assert upd["names"] == list(PARAMS) and upd["dtypes"] == ["float32", "bfloat16", "float32"]
    assert upd["shapes"] == [[50, 8], [16, 8], [50, 8]] and upd["weight_version"] == "3"
    assert engine.status().version == 3


async def test_tensor_update_needs_a_session(
    http_fake: tuple[SglangEngine, FakeHttpSglang],
) -> None:
    engine, fake = http_fake
    http = engine._http
    with pytest.raises(SglangRequestError, match="must run between begin_weight_update"):
        await http.update_weights_from_tensor(serialized_named_tensors=["AAAA"], weight_version="4")
    await http.begin_weight_update()
    with pytest.raises(SglangRequestError, match="session is already open"):
        await http.begin_weight_update()
    answer = await http.update_weights_from_tensor(
        serialized_named_tensors=["AAAA"], weight_version="4", load_format="flattened_bucket"
    )
    assert answer["success"] is True
    await http.end_weight_update()
    assert fake.version == "4"


async def test_http_errors_are_clear(http_fake: tuple[SglangEngine, FakeHttpSglang]) -> None:
    engine, _ = http_fake
    with pytest.raises(SglangRequestError, match="/generate: HTTP 400: unknown field `bogus`"):
        async for _ in engine._http.generate_stream(
            {"input_ids": [1], "sampling_params": {"bogus": 1}}
        ):
            pass
    with pytest.raises(SglangRequestError, match="HTTP 422"):
        await engine._http.post("/pause_generation", {"mode": "retract", "extra": 1})


def test_stream_event_chunks_split_at_version_spans() -> None:
    event = {
        "output_ids": [5, 6, 7, 8],
        "meta_info": {
            "finish_reason": {"type": "stop", "matched": 8},
            "weight_version": "2",
            "weight_versions": [
                {"version": "1", "start": 0, "end": 3},
                {"version": "2", "start": 3, "end": 4},
            ],
            "output_token_logprobs": [
                [-0.1, 5, None],
                [-0.2, 6, None],
                [-0.3, 7, None],
                [-0.4, 8, None],
            ],
        },
    }
    chunks, sent, finished = stream_event_chunks(event, sent=1)
    assert (sent, finished) == (4, True)
    assert [(c.token_ids, c.version, c.finish_reason) for c in chunks] == [
        ((6, 7), 1, None),
        ((8,), 2, FinishReason.STOP),
    ]
    assert chunks[0].logprobs == (-0.2, -0.3)
    bad = {
        "output_ids": [5],
        "meta_info": {"weight_version": "x", "output_token_logprobs": [[-1, 5, None]]},
    }
    with pytest.raises(EngineError, match="weight version 'x'"):
        stream_event_chunks(bad, sent=0)


def test_launch_flags(model_dir: Path) -> None:
    grpc_argv = launch_argv(SglangEngineConfig(model_dir=model_dir, python="/py"), 30000, 40000)
    assert grpc_argv[:3] == ["/py", "-m", "sglang.launch_server"]
    assert (
        "--smg-grpc-mode" in grpc_argv and grpc_argv[grpc_argv.index("--grpc-port") + 1] == "40000"
    )
    assert "--enable-deterministic-inference" not in grpc_argv
    http_argv = launch_argv(
        SglangEngineConfig(model_dir=model_dir, surface="http", initial_version=5, extra_args=("--tp-size", "2")),
        30000, 40000,
    )  # fmt: skip
    assert "--smg-grpc-mode" not in http_argv and "--grpc-port" not in http_argv
    assert "--enable-deterministic-inference" in http_argv and http_argv[-2:] == ["--tp-size", "2"]
    assert http_argv[http_argv.index("--weight-version") + 1] == "5"


def test_tokenizer_is_the_model_dirs(model_dir: Path) -> None:
    from rlfleet.rollout.sglang_engine import HfTokenizer

    tok = HfTokenizer(model_dir)
    ids = tok.encode("a b c")
    assert ids == [1, 2, 3] and tok.decode(ids) == "a b c" and tok.eos_token_id == 0


# -- the server as a real process --------------------------------------------------------------


def process_config(
    model_dir: Path, tmp_path: Path, surface: str, *extra: str, **kw: object
) -> SglangEngineConfig:
    return SglangEngineConfig(
        model_dir=model_dir, surface=surface, launcher=FAKE_SERVER, extra_args=extra,  # type: ignore[arg-type]
        work_dir=tmp_path / "work", **kw,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize("surface", ["grpc", "http"])
async def test_process_serves_and_close_stops_its_group(
    model_dir: Path, tmp_path: Path, surface: str
) -> None:
    pids = tmp_path / "pids"
    config = process_config(
        model_dir,
        tmp_path,
        surface,
        "--fake-pid-file",
        str(pids),
        "--fake-startup-s",
        "0.3",
        start_timeout_s=20,
    )
    engine = await SglangEngine.start(config)
    try:
        chunks = await collect(engine.generate(sample(max_new_tokens=4, temperature=0.0)))
        assert tokens(chunks) == expected(4) and chunks[-1].finish_reason is FinishReason.LENGTH
    finally:
        await engine.close()
    leader, child = map(int, pids.read_text().split())
    assert leader == engine.pid
    assert gone(leader) and gone(child)
    log = (tmp_path / "work" / "sglang.log").read_text()
    assert "--model-path" in log and ("--smg-grpc-mode" in log) == (surface == "grpc")


async def test_close_kills_a_server_ignoring_sigterm(model_dir: Path, tmp_path: Path) -> None:
    config = process_config(
        model_dir, tmp_path, "http", "--fake-ignore-sigterm", stop_timeout_s=0.3, start_timeout_s=20
    )
    engine = await SglangEngine.start(config)
    t0 = time.monotonic()
    await engine.close()
    assert gone(engine.pid) and time.monotonic() - t0 < 5


async def test_never_healthy_is_a_clear_error_within_the_timeout(
    model_dir: Path, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    config = process_config(
        model_dir,
        tmp_path,
        "grpc",
        "--fake-never-healthy",
        "--fake-pid-file",
        str(pids),
        start_timeout_s=1.0,
    )
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="did not become healthy within 1 s"):
        await SglangEngine.start(config)
    assert time.monotonic() - t0 < 4
    leader, child = map(int, pids.read_text().split())
    assert gone(leader) and gone(child)


async def test_server_exiting_early_is_reported_with_its_log(
    model_dir: Path, tmp_path: Path
) -> None:
    config = process_config(model_dir, tmp_path, "http", "--fake-exit", "3", start_timeout_s=20)
    with pytest.raises(EngineError, match=r"exited with status 3(.|\n)*fake: exiting as asked"):
        await SglangEngine.start(config)


async def test_missing_server_program_is_a_clear_error(model_dir: Path, tmp_path: Path) -> None:
    config = SglangEngineConfig(
        model_dir=model_dir, launcher=("/nonexistent/python",), work_dir=tmp_path
    )
    with pytest.raises(EngineError, match="could not start SGLang"):
        await SglangEngine.start(config)
