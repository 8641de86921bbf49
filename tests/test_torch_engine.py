"""The torch engine on tiny models made here (Qwen2 and Llama, fp32, CPU).

The acceptance checks: logprobs equal a teacher-forced transformers forward pass within
1e-4; a sequence's tokens do not depend on its neighbours; cancellation frees the slot;
weights pushed mid-stream give correctly versioned chunks, and greedy output after a push
equals that of an engine started on the new weights.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from rlfleet.rollout.engine import EngineError, WeightMismatch, WeightUpdate
from rlfleet.rollout.kv_cache import SlotCache, prefill_mask
from rlfleet.rollout.model_init import write_model
from rlfleet.rollout.records import (
    DType,
    FinishReason,
    SampleRequest,
    SamplingParams,
    TensorSpec,
    TokenChunk,
    WeightManifest,
)
from rlfleet.rollout.sampling import inverse_cdf, logits_to_logprobs, sample
from rlfleet.rollout.stops import StopMatcher, cut_at_stop
from rlfleet.rollout.torch_batch import PLAIN_DECODERS, DecodeBatch, NewRow, forward_layers
from rlfleet.rollout.torch_engine import TorchEngine, TorchEngineConfig

PROMPTS = ["What is 12 + 34?", "def add(a, b):\n", "The quick brown fox"]
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qwen2")
    write_model(out, seed=1)
    return out


@pytest.fixture(scope="module")
def qwen_new_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture, other weights: the "next policy"."""
    out = tmp_path_factory.mktemp("qwen2-next")
    write_model(out, seed=2)
    return out


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory, qwen_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("llama")
    qwen = AutoModelForCausalLM.from_pretrained(qwen_dir)
    config = LlamaConfig(
        vocab_size=qwen.config.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=0,
        pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        LlamaForCausalLM(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((qwen_dir / name).read_bytes())
    return out


def make_engine(model: Path, **kw: object) -> TorchEngine:
    return TorchEngine(TorchEngineConfig(**{"model": model, "max_seq_len": 256, **kw}))  # type: ignore[arg-type]


async def collect(chunks: AsyncIterator[TokenChunk]) -> list[TokenChunk]:
    async def all_of() -> list[TokenChunk]:
        return [c async for c in chunks]

    return await asyncio.wait_for(all_of(), TIMEOUT)


def request(engine: TorchEngine, prompt: str, key: str = "r", **sampling: object) -> SampleRequest:
    params = SamplingParams(**{"max_new_tokens": 16, "seed": 7, **sampling})  # type: ignore[arg-type]
    return SampleRequest(
        key=key, prompt_token_ids=tuple(engine.tokenizer.encode(prompt)), sampling=params
    )


def tokens(chunks: Sequence[TokenChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def logprobs(chunks: Sequence[TokenChunk]) -> list[float]:
    return [x for c in chunks for x in c.logprobs]


def teacher_forced(
    model_dir: Path, prompt: Sequence[int], completion: Sequence[int], temperature: float
) -> torch.Tensor:
    """log p(completion) as the learner computes it: one forward over prompt+completion."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor([[*prompt, *completion]])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1]  # [T, V]
    scaled = torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
    return scaled.gather(-1, torch.tensor(completion)[:, None])[:, 0]


@pytest.fixture(scope="module")
def qwen(qwen_dir: Path) -> TorchEngine:
    # (closed by the process's end: its thread is a daemon)
    return make_engine(qwen_dir)


# -- sampling, pure --


def test_sampling_functions() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 0.0, 0.0]])
    temp = torch.tensor([1.0, 0.0])
    lp = logits_to_logprobs(logits, temp)
    assert torch.allclose(lp[0], torch.log_softmax(logits[0], -1))
    assert torch.allclose(lp[1], torch.log_softmax(logits[1], -1))  # greedy: unscaled
    u = torch.tensor([0.99, 0.5])
    one = torch.ones(2, dtype=torch.long)
    top1 = sample(lp, False, one, torch.ones(2), u, filtered=True)
    assert top1.tolist() == [0, 1]  # top-k 1 is greedy
    tiny_p = sample(lp, False, 0 * one, torch.full((2,), 1e-3), u, filtered=True)
    assert tiny_p.tolist() == [0, 1]
    greedy = sample(lp, True, 0 * one, torch.ones(2), u, filtered=False)
    assert greedy.tolist() == [0, 1]
    weights = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    drawn = {inverse_cdf(weights, torch.tensor([x])).item() for x in (0.0, 0.3, 0.5, 0.999)}
    assert drawn == {1, 3}


def test_stop_matcher_and_cut() -> None:
    m = StopMatcher(["\n\n", "END"])
    assert not m.found("abc")
    assert not m.found("abc\n")
    assert m.found("abc\n\nx")
    assert cut_at_stop("x = 1END\n\nmore", ["\n\n", "END"]) == "x = 1"
    assert cut_at_stop("no stop", ["END"]) == "no stop"


def test_the_direct_layer_loop_equals_the_decoder_forward(qwen_dir: Path, llama_dir: Path) -> None:
    for model_dir in (qwen_dir, llama_dir):
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        decoder = model.base_model
        assert type(decoder).__name__ in PLAIN_DECODERS
        cache = SlotCache(
            layers=2,
            slots=4,
            kv_heads=2,
            max_len=32,
            head_dim=16,
            dtype=torch.float32,
            device=torch.device("cpu"),
        )
        ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
        lengths = torch.tensor([4, 3])
        positions = torch.arange(4)[None].expand(2, 4)
        with torch.inference_mode():
            cache.for_prefill(0, 2, 4)
            direct = forward_layers(decoder, cache, ids, positions, prefill_mask(lengths, 4))
            cache.for_prefill(0, 2, 4)
            out = decoder(
                input_ids=ids,
                position_ids=positions,
                attention_mask=prefill_mask(lengths, 4),
                cache=cache,
                use_cache=True,
            )
        assert torch.equal(direct, out.last_hidden_state)


def test_the_rotary_table_equals_the_rotary_module(qwen_dir: Path, llama_dir: Path) -> None:
    for model_dir in (qwen_dir, llama_dir):
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        batch = DecodeBatch(model, slots=2, max_len=64)
        positions = torch.tensor([0, 5, 63])
        with torch.inference_mode():
            table = batch.rotary(positions)
            direct = model.base_model.rotary_emb(batch.bias[:1, 0, 0], positions[:, None])
        assert table is not None
        assert torch.equal(table[0], direct[0]) and torch.equal(table[1], direct[1])


def test_a_padded_prefill_equals_one_prompt_at_a_time(qwen_dir: Path) -> None:
    """Prompts of different lengths prefilled together (right-padded, causal attention with
    no mask) score as each does alone, and decode on the same way."""
    model = AutoModelForCausalLM.from_pretrained(qwen_dir).eval()
    rows = [
        NewRow(prompt=list(range(5, 5 + n)), temperature=1.0, top_p=1.0, top_k=0, seed=n,
               max_new_tokens=8)
        for n in (3, 11, 6)
    ]  # fmt: skip
    with torch.inference_mode():
        together = DecodeBatch(model, slots=3, max_len=32)
        got = [together.add(rows), *(together.step() for _ in range(4))]
        alone = []
        for row in rows:
            batch = DecodeBatch(model, slots=1, max_len=32)
            alone.append([batch.add([row]), *(batch.step() for _ in range(4))])
    for step, (tok, lp) in enumerate(got):
        assert tok.tolist() == [a[step][0].item() for a in alone]
        want = torch.cat([a[step][1] for a in alone])
        assert torch.allclose(lp, want, atol=1e-5), (step, (lp - want).abs().max())


def test_repeated_prompts_prefilled_once_decode_as_each_alone(qwen_dir: Path) -> None:
    """A group's samples share one prompt: it is prefilled once and its keys and values
    copied to the other rows (interleaved with other prompts here); every row samples and
    decodes as it would alone."""
    model = AutoModelForCausalLM.from_pretrained(qwen_dir).eval()
    a, b, c = list(range(5, 12)), list(range(20, 23)), list(range(30, 41))
    prompts = [a, a, b, a, c, b]
    rows = [
        NewRow(prompt=p, temperature=1.0, top_p=1.0, top_k=0, seed=i, max_new_tokens=8)
        for i, p in enumerate(prompts)
    ]
    calls: list[int] = []
    hook = model.model.embed_tokens.register_forward_hook(
        lambda _m, args, _out: calls.append(args[0].shape[0])
    )
    with torch.inference_mode():
        together = DecodeBatch(model, slots=6, max_len=32)
        got = [together.add(rows), *(together.step() for _ in range(4))]
        assert calls[0] == 3  # one prefill row per distinct prompt
        alone = []
        for row in rows:
            batch = DecodeBatch(model, slots=1, max_len=32)
            alone.append([batch.add([row]), *(batch.step() for _ in range(4))])
    hook.remove()
    for step, (tok, lp) in enumerate(got):
        assert tok.tolist() == [x[step][0].item() for x in alone]
        want = torch.cat([x[step][1] for x in alone])
        assert torch.allclose(lp, want, atol=1e-5), (step, (lp - want).abs().max())


# -- the engine --


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
async def test_logprobs_match_a_teacher_forced_forward(
    arch: str, qwen_dir: Path, llama_dir: Path
) -> None:
    model_dir = qwen_dir if arch == "qwen2" else llama_dir
    engine = make_engine(model_dir)
    try:
        reqs = [
            request(engine, PROMPTS[0], "t1", temperature=1.0, max_new_tokens=24),
            request(engine, PROMPTS[1], "t07", temperature=0.7, top_p=0.9, max_new_tokens=24),
            request(engine, PROMPTS[2], "g", temperature=0.0, max_new_tokens=24),
        ]
        results = await asyncio.gather(*(collect(engine.generate(r)) for r in reqs))
    finally:
        await engine.close()
    for req, chunks in zip(reqs, results, strict=True):
        got = torch.tensor(logprobs(chunks))
        want = teacher_forced(
            model_dir, req.prompt_token_ids, tokens(chunks), req.sampling.temperature
        )
        assert len(got) >= 1
        assert torch.allclose(got, want, atol=1e-4), (req.key, (got - want).abs().max())


async def test_seeds(qwen: TorchEngine) -> None:
    a = await collect(qwen.generate(request(qwen, PROMPTS[0], seed=1, max_new_tokens=24)))
    again = await collect(qwen.generate(request(qwen, PROMPTS[0], seed=1, max_new_tokens=24)))
    other = await collect(qwen.generate(request(qwen, PROMPTS[0], seed=2, max_new_tokens=24)))
    assert tokens(a) == tokens(again) and logprobs(a) == logprobs(again)
    assert tokens(a) != tokens(other)


async def test_greedy_is_deterministic(qwen: TorchEngine) -> None:
    runs = [
        await collect(qwen.generate(request(qwen, PROMPTS[1], seed=s, temperature=0.0)))
        for s in (1, 2)
    ]
    assert tokens(runs[0]) == tokens(runs[1])


async def test_a_sequence_does_not_depend_on_its_batch(qwen: TorchEngine) -> None:
    mine = request(qwen, PROMPTS[0], "mine", seed=11, max_new_tokens=32)
    alone = await collect(qwen.generate(mine))
    others = [
        request(qwen, PROMPTS[i % 3] * (1 + i % 2), f"o{i}", seed=i, top_p=0.8, top_k=i)
        for i in range(5)
    ]
    together = await asyncio.gather(
        *(collect(qwen.generate(r)) for r in (others[0], others[1], mine, *others[2:]))
    )
    assert tokens(together[2]) == tokens(alone)
    assert torch.allclose(
        torch.tensor(logprobs(together[2])), torch.tensor(logprobs(alone)), atol=1e-5
    )


async def test_joining_mid_generation_changes_nothing(qwen: TorchEngine) -> None:
    long = request(qwen, PROMPTS[2], "long", seed=5, max_new_tokens=48)
    alone = await collect(qwen.generate(long))
    stream = qwen.generate(long)
    first = await asyncio.wait_for(anext(stream), TIMEOUT)
    joiner = await collect(qwen.generate(request(qwen, PROMPTS[0], "join", seed=6)))
    rest = await collect(stream)
    assert tokens([first, *rest]) == tokens(alone)
    assert len(tokens(joiner)) >= 1


async def test_requests_sent_together_are_admitted_together(
    qwen_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``generate_many`` queues its requests under one hold of the lock: the loop, busy
    decoding another sequence meanwhile, prefills all of them in one batch, every time;
    and the same requests on an idle engine give the same tokens and logprobs to the bit
    (what makes a seeded training run reproducible)."""
    engine = make_engine(qwen_dir, max_batch=16)
    added: list[int] = []
    add = engine._batch.add

    def counting(rows: Sequence[object]) -> object:
        added.append(len(rows))
        return add(rows)  # type: ignore[arg-type]

    monkeypatch.setattr(engine._batch, "add", counting)
    try:
        for round_ in range(5):
            busy = engine.generate(request(engine, PROMPTS[2], f"busy{round_}", max_new_tokens=60))
            await asyncio.wait_for(anext(busy), TIMEOUT)
            added.clear()
            many = [
                request(engine, PROMPTS[i % 3], f"{round_}/{i}", seed=i, max_new_tokens=8)
                for i in range(12)
            ]
            # The interpreter switches threads as often as it can here: requests queued one
            # by one would be split between two of the loop's turns.
            interval = sys.getswitchinterval()
            sys.setswitchinterval(1e-6)
            try:
                streams = engine.generate_many(many)
            finally:
                sys.setswitchinterval(interval)
            outs = await asyncio.gather(*(collect(s) for s in streams))
            assert added[0] == 12, added
            assert all(o[-1].finish_reason is not None for o in outs)
            await busy.aclose()
        many = [request(engine, PROMPTS[i % 3], f"x{i}", seed=i) for i in range(12)]
        runs = []
        for _ in range(2):
            outs = await asyncio.gather(*(collect(s) for s in engine.generate_many(many)))
            runs.append([(tokens(o), logprobs(o)) for o in outs])
        assert runs[0] == runs[1]
    finally:
        await engine.close()


async def test_a_stream_closed_unread_frees_its_row(qwen_dir: Path) -> None:
    engine = make_engine(qwen_dir, max_batch=4)
    try:
        reqs = [request(engine, PROMPTS[0], f"r{i}", max_new_tokens=200) for i in range(6)]
        streams = engine.generate_many(reqs)
        for s in streams:
            await s.aclose()  # (never read)
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while engine.status().running or engine.status().queued:
            assert asyncio.get_running_loop().time() < deadline, engine.status()
            await asyncio.sleep(0.01)
    finally:
        await engine.close()


async def test_stop_token_ids_and_max_new_tokens(qwen: TorchEngine) -> None:
    free = await collect(
        qwen.generate(request(qwen, PROMPTS[0], temperature=0.0, max_new_tokens=12))
    )
    got = tokens(free)
    assert free[-1].finish_reason is FinishReason.LENGTH and len(got) == 12
    stop = got[4]
    stopped = await collect(
        qwen.generate(
            request(qwen, PROMPTS[0], temperature=0.0, max_new_tokens=12, stop_token_ids=(stop,))
        )
    )
    cut = got.index(stop) + 1
    assert tokens(stopped) == got[:cut], "ends on the stop token, which is kept"
    assert stopped[-1].finish_reason is FinishReason.STOP


async def test_stop_strings(qwen: TorchEngine) -> None:
    free = await collect(
        qwen.generate(request(qwen, PROMPTS[1], temperature=0.0, max_new_tokens=20))
    )
    got = tokens(free)
    text = qwen.tokenizer.decode(got)
    # A stop string made of the text of tokens 5..6: generation ends on the token that
    # completes its first occurrence.
    before = qwen.tokenizer.decode(got[:5])
    stop = text[len(before) : len(before) + 3] or text[-2:]
    stopped = await collect(
        qwen.generate(request(qwen, PROMPTS[1], temperature=0.0, max_new_tokens=20, stop=(stop,)))
    )
    out = tokens(stopped)
    assert stopped[-1].finish_reason is FinishReason.STOP
    assert out == got[: len(out)]
    assert stop in qwen.tokenizer.decode(out) and stop not in qwen.tokenizer.decode(out[:-1])
    assert cut_at_stop(qwen.tokenizer.decode(out), [stop]) == text[: text.find(stop)]


async def test_a_too_long_prompt_is_refused(qwen_dir: Path) -> None:
    engine = make_engine(qwen_dir, max_seq_len=8)
    try:
        req = SampleRequest(
            key="long",
            prompt_token_ids=tuple(range(1, 9)),
            sampling=SamplingParams(max_new_tokens=4),
        )
        with pytest.raises(ValueError, match="no room"):
            await collect(engine.generate(req))
        short = SampleRequest(
            key="short", prompt_token_ids=(1, 2, 3, 4, 5), sampling=SamplingParams(max_new_tokens=9)
        )
        chunks = await collect(engine.generate(short))
        assert len(tokens(chunks)) <= 3, "prompt plus completion fits max_seq_len"
    finally:
        await engine.close()


async def test_cancelling_frees_the_slot(qwen_dir: Path) -> None:
    engine = make_engine(qwen_dir, max_batch=1)
    try:
        stream = engine.generate(request(engine, PROMPTS[0], "a", max_new_tokens=200))
        await asyncio.wait_for(anext(stream), TIMEOUT)
        assert engine.status().running == 1
        await stream.aclose()
        # With one row, this only runs if the first sequence left it.
        chunks = await collect(engine.generate(request(engine, PROMPTS[1], "b", max_new_tokens=4)))
        assert chunks[-1].finish_reason is not None
        assert engine.status().running == 0 and engine.status().queued == 0
    finally:
        await engine.close()


async def test_close_aborts_running_and_queued(qwen_dir: Path) -> None:
    engine = make_engine(qwen_dir, max_batch=1, flush_interval_s=0.0)
    running = engine.generate(request(engine, PROMPTS[0], "run", max_new_tokens=250))
    queued = engine.generate(request(engine, PROMPTS[1], "wait", max_new_tokens=4))
    await asyncio.wait_for(anext(running), TIMEOUT)
    waiting = asyncio.ensure_future(collect(queued))
    await asyncio.sleep(0.05)
    assert engine.status().queued == 1
    await engine.close()
    rest = await collect(running)
    assert rest[-1].finish_reason is FinishReason.ABORT
    assert (await waiting)[-1].finish_reason is FinishReason.ABORT
    with pytest.raises(EngineError, match="closed"):
        await collect(engine.generate(request(engine, PROMPTS[1])))


# -- weights --


def weights_file(model_dir: Path, out: Path, version: int) -> WeightUpdate:
    """An update holding every parameter of ``model_dir`` (the tied head included)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out))
    specs = tuple(
        TensorSpec(name=k, dtype=DType.FLOAT32, shape=tuple(v.shape)) for k, v in tensors.items()
    )
    return WeightUpdate(manifest=WeightManifest(version=version, tensors=specs), path=out)


async def test_greedy_after_an_update_equals_a_fresh_engine(
    qwen_dir: Path, qwen_new_dir: Path, tmp_path: Path
) -> None:
    update = weights_file(qwen_new_dir, tmp_path / "v1.safetensors", version=1)
    fresh = make_engine(qwen_new_dir)
    engine = make_engine(qwen_dir)
    try:
        req = request(engine, PROMPTS[0], temperature=0.0, max_new_tokens=24)
        before = await collect(engine.generate(req))
        await engine.update_weights(update)
        after = await collect(engine.generate(req))
        expected = await collect(fresh.generate(req))
    finally:
        await engine.close()
        await fresh.close()
    assert engine.status().version == 1 and {c.version for c in after} == {1}
    assert {c.version for c in before} == {0}
    assert tokens(after) == tokens(expected)
    assert torch.allclose(torch.tensor(logprobs(after)), torch.tensor(logprobs(expected)))
    # (random tiny models often repeat one token greedily: the scores show the change)
    assert not torch.allclose(torch.tensor(logprobs(after)), torch.tensor(logprobs(before)))


async def test_an_update_mid_stream_versions_the_chunks(
    qwen_dir: Path, qwen_new_dir: Path, tmp_path: Path
) -> None:
    update = weights_file(qwen_new_dir, tmp_path / "v5.safetensors", version=5)
    engine = make_engine(qwen_dir, flush_interval_s=0.0)
    try:
        stream = engine.generate(request(engine, PROMPTS[0], max_new_tokens=200))
        first = await asyncio.wait_for(anext(stream), TIMEOUT)
        await engine.update_weights(update)
        rest = await collect(stream)
    finally:
        await engine.close()
    versions = [c.version for c in (first, *rest) for _ in c.token_ids]
    assert versions[0] == 0 and versions[-1] == 5
    assert versions == sorted(versions), "no token of the old version after the new one"
    assert set(versions) == {0, 5}


def test_check_manifest_rejects_what_does_not_fit(qwen: TorchEngine) -> None:
    def manifest(*specs: TensorSpec) -> WeightManifest:
        return WeightManifest(version=1, tensors=specs)

    norm = TensorSpec(name="model.norm.weight", dtype=DType.FLOAT32, shape=(64,))
    head = TensorSpec(name="lm_head.weight", dtype=DType.FLOAT32, shape=(qwen.vocab_size, 64))
    qwen.check_manifest(manifest(norm, head))  # the tied head answers to its own name too
    bad = {
        "not a parameter": TensorSpec(name="model.nope", dtype=DType.FLOAT32, shape=(64,)),
        "shape": TensorSpec(name="model.norm.weight", dtype=DType.FLOAT32, shape=(65,)),
        "dtype": TensorSpec(name="model.norm.weight", dtype=DType.BFLOAT16, shape=(64,)),
    }
    for says, spec in bad.items():
        with pytest.raises(WeightMismatch, match=says) as err:
            qwen.check_manifest(manifest(norm, spec))
        assert spec.name in str(err.value)


async def test_a_file_that_differs_from_its_manifest_changes_nothing(
    qwen_dir: Path, tmp_path: Path
) -> None:
    engine = make_engine(qwen_dir)
    try:
        req = request(engine, PROMPTS[0], temperature=0.0)
        before = await collect(engine.generate(req))
        path = tmp_path / "short.safetensors"
        save_file({"model.norm.weight": torch.zeros(64)}, str(path))
        specs = (
            TensorSpec(name="model.norm.weight", dtype=DType.FLOAT32, shape=(64,)),
            TensorSpec(
                name="model.embed_tokens.weight", dtype=DType.FLOAT32, shape=(engine.vocab_size, 64)
            ),
        )
        with pytest.raises(WeightMismatch, match="differ from the manifest"):
            await engine.update_weights(
                WeightUpdate(manifest=WeightManifest(version=9, tensors=specs), path=path)
            )
        after = await collect(engine.generate(req))
    finally:
        await engine.close()
    assert engine.status().version == 0
    assert tokens(after) == tokens(before)


# -- the compiled decode step --


def mixed_requests(engine: TorchEngine) -> list[SampleRequest]:
    """Every sampling branch: plain, tempered and filtered, greedy; three prompt lengths."""
    return [
        request(engine, PROMPTS[0], "t1", temperature=1.0, seed=1, max_new_tokens=40),
        request(engine, PROMPTS[1], "t07", temperature=0.7, top_p=0.9, seed=2, max_new_tokens=30),
        request(engine, PROMPTS[2], "g", temperature=0.0, max_new_tokens=20),
        request(engine, PROMPTS[0], "k5", temperature=1.3, top_k=5, seed=3, max_new_tokens=35),
    ]


async def run_mixed(engine: TorchEngine) -> list[list[TokenChunk]]:
    """One sequence alone (one row), then the rest together, one joining mid-way."""
    reqs = mixed_requests(engine)
    alone = await collect(engine.generate(reqs[0]))
    first = [asyncio.ensure_future(collect(engine.generate(r))) for r in reqs[1:3]]
    await asyncio.sleep(0.01)
    late = await collect(engine.generate(reqs[3]))
    return [alone, *[await f for f in first], late]


async def test_compiled_and_eager_give_the_same_tokens(qwen_dir: Path) -> None:
    from torch._dynamo.utils import counters

    eager = make_engine(qwen_dir)
    compiled = make_engine(qwen_dir, compile=True)
    graphs = counters["stats"]["unique_graphs"]
    try:
        assert compiled._batch.compiled  # (not fallen back to eager)
        want = await run_mixed(eager)
        got = await run_mixed(compiled)
    finally:
        await eager.close()
        await compiled.close()
    assert counters["stats"]["unique_graphs"] == graphs, "compiled again while serving"
    for w, g in zip(want, got, strict=True):
        assert tokens(g) == tokens(w)
        assert torch.allclose(torch.tensor(logprobs(g)), torch.tensor(logprobs(w)), atol=1e-5)
        assert g[-1].finish_reason == w[-1].finish_reason


async def test_a_compiled_engine_takes_new_weights(
    qwen_dir: Path, qwen_new_dir: Path, tmp_path: Path
) -> None:
    update = weights_file(qwen_new_dir, tmp_path / "v1.safetensors", version=1)
    fresh = make_engine(qwen_new_dir)
    engine = make_engine(qwen_dir, compile=True)
    try:
        req = request(engine, PROMPTS[0], temperature=0.0, max_new_tokens=24)
        before = await collect(engine.generate(req))
        await engine.update_weights(update)
        after = await collect(engine.generate(req))
        expected = await collect(fresh.generate(req))
    finally:
        await engine.close()
        await fresh.close()
    assert tokens(after) == tokens(expected)
    assert torch.allclose(
        torch.tensor(logprobs(after)), torch.tensor(logprobs(expected)), atol=1e-5
    )
    assert not torch.allclose(torch.tensor(logprobs(after)), torch.tensor(logprobs(before)))


async def test_a_failed_compilation_falls_back_to_eager(
    qwen_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from torch._dynamo.exc import BackendCompilerFailed

    def fail(self: DecodeBatch) -> None:
        raise BackendCompilerFailed(fail, RuntimeError("no C++ compiler"), None)

    monkeypatch.setattr(DecodeBatch, "warm_up", fail)
    with caplog.at_level("WARNING", logger="rlfleet.rollout.torch_engine"):
        engine = make_engine(qwen_dir, compile=True)
    try:
        assert not engine._batch.compiled
        assert "running eager" in caplog.text and "no C++ compiler" in caplog.text
        chunks = await collect(engine.generate(request(engine, PROMPTS[0])))
        assert chunks[-1].finish_reason is not None
    finally:
        await engine.close()


# -- on a GPU --


def cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
async def test_on_cuda(qwen_dir: Path, dtype: str) -> None:
    cuda()
    engine = make_engine(qwen_dir, device="cuda", dtype=dtype)
    try:
        reqs = [
            request(engine, p, f"k{i}", seed=i, max_new_tokens=24) for i, p in enumerate(PROMPTS)
        ]
        results = await asyncio.gather(*(collect(engine.generate(r)) for r in reqs))
    finally:
        await engine.close()
    tolerance = 1e-4 if dtype == "float32" else 0.25  # (bf16 against an fp32 forward)
    for req, chunks in zip(reqs, results, strict=True):
        want = teacher_forced(qwen_dir, req.prompt_token_ids, tokens(chunks), 1.0)
        got = torch.tensor(logprobs(chunks))
        assert (got - want).abs().max() < tolerance, (dtype, (got - want).abs().max())
