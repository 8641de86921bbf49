"""The learner's distributed plumbing, run as real processes on CPU (gloo, loopback): two
FSDP2 ranks match one process step for step; the gathered export equals the full state
dict and loads as an HF model with the same logits; pushed weights land in a rollout
server's torch engine; a checkpoint resumed in fresh processes continues exactly."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from learner_launch import launch
from rollout_fakes import Running

from rlfleet.learner.export import hf_name
from rlfleet.rollout.model_init import write_model
from rlfleet.rollout.torch_engine import TorchEngine, TorchEngineConfig

pytestmark = pytest.mark.timeout(240)

FP32_TOL = 1e-5
PARAM_TOL = 1e-4
"""Parameters after 4 AdamW steps at lr 1e-2: Adam divides by the root of the second
moment, so early updates are near +-lr whatever the gradient's size, and a 1e-7 difference
in a near-zero gradient can move a weight by a visible fraction of lr (measured: 1e-5)."""


def load(path: Path) -> Any:
    return torch.load(path, weights_only=False)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every launch the tests compare, made once: 2 ranks (pushing to a rollout server),
    1 process, 2 fresh ranks resuming the 2-rank checkpoint, and the extras."""
    tmp = tmp_path_factory.mktemp("learner")
    model = tmp / "model"
    write_model(model, seed=5)

    async def all_launches() -> dict[str, Any]:
        engine = TorchEngine(TorchEngineConfig(model=model, max_batch=2, max_seq_len=64))
        try:
            async with Running(engine) as server:
                await launch(
                    {
                        "model": str(model),
                        "out": str(tmp / "two"),
                        "mode": "train",
                        "push": server.target,
                    },
                    ranks=2,
                )
                # The engine's parameters after both pushes, each shared one under every name.
                served = {
                    n: p.detach().clone()
                    for n, p in engine.model.named_parameters(remove_duplicate=False)
                }
                version = engine.version
        finally:
            await engine.close()
        await launch({"model": str(model), "out": str(tmp / "one"), "mode": "train"}, ranks=1)
        ckpt = next((tmp / "two" / "ckpt").iterdir())
        await launch(
            {
                "model": str(model),
                "out": str(tmp / "two"),
                "mode": "resume",
                "checkpoint": str(ckpt),
            },
            ranks=2,
        )
        await launch({"model": str(model), "out": str(tmp / "two"), "mode": "extras"}, ranks=2)
        return {"served": served, "version": version}

    found = asyncio.run(all_launches())
    return {
        **found,
        "tmp": tmp,
        "two": load(tmp / "two" / "train.pt"),
        "one": load(tmp / "one" / "train.pt"),
        "resumed": load(tmp / "two" / "resume.pt"),
        "extras": load(tmp / "two" / "extras.pt"),
    }


def test_two_ranks_match_one_process_loss_gradients_and_parameters(runs: dict[str, Any]) -> None:
    two, one = runs["two"], runs["one"]
    assert len(two["steps"]) == len(one["steps"]) == 4
    for s2, s1 in zip(two["steps"], one["steps"], strict=True):
        assert abs(s2["loss"] - s1["loss"]) < FP32_TOL
        assert abs(s2["norm"] - s1["norm"]) < FP32_TOL
        assert s2["grads"].keys() == s1["grads"].keys()
        worst = max(max_diff(s2["grads"][n], s1["grads"][n]) for n in s1["grads"])
        assert worst < FP32_TOL, worst
    assert two["gathered"].keys() == one["gathered"].keys()
    worst = max(max_diff(two["gathered"][n], one["gathered"][n]) for n in one["gathered"])
    assert worst < PARAM_TOL, worst
    # The steps did move the weights, and the loss with them.
    assert two["steps"][0]["loss"] != two["steps"][-1]["loss"]


def test_the_gathered_export_is_the_full_state_dict(runs: dict[str, Any]) -> None:
    two = runs["two"]
    gathered, full = two["gathered"], two["full"]
    # The tied head is the embedding: exported once, under the embedding's name.
    assert set(full) - set(gathered) == {"lm_head.weight"}
    assert torch.equal(full["lm_head.weight"], full["model.embed_tokens.weight"])
    for name, t in gathered.items():
        assert torch.equal(t, full[name]), name
        assert t.device.type == "cpu"


def test_the_exported_directory_loads_with_the_same_logits(runs: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM

    two = runs["two"]
    hf = runs["tmp"] / "two" / "hf"
    assert {p.name for p in hf.iterdir()} >= {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    }
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=two["probe"]).logits
    assert max_diff(logits, two["logits"]) < FP32_TOL
    state = model.state_dict()
    for name, t in two["gathered"].items():
        assert torch.equal(state[name], t), name


def test_pushed_weights_are_the_learners_full_state_dict(runs: dict[str, Any]) -> None:
    two = runs["two"]
    assert two["pushed"] == [1, 2] and runs["version"] == 2
    served, full = runs["served"], two["full"]
    assert served.keys() == full.keys()
    for name, t in full.items():
        assert torch.equal(served[name], t), name


def test_a_resumed_run_takes_exactly_the_next_step(runs: dict[str, Any]) -> None:
    two, resumed = runs["two"], runs["resumed"]
    after, again = two["steps"][-1], resumed["steps"][-1]
    assert again["loss"] == after["loss"]
    assert again["norm"] == after["norm"]
    assert again["draws"] == after["draws"], "python and torch RNG states restored"
    assert resumed["lr"] == two["lr"]
    for name, t in two["gathered"].items():
        assert torch.equal(resumed["gathered"][name], t), name
    ckpts = sorted(p.name for p in (runs["tmp"] / "two" / "ckpt").iterdir())
    assert ckpts == ["step-00000003"]


def test_activation_checkpointing_and_bf16_on_cpu(runs: dict[str, Any]) -> None:
    extras = runs["extras"]
    plain, ac, bf16 = extras["plain"], extras["ac"], extras["bf16"]
    assert ac["loss"] == pytest.approx(plain["loss"], abs=FP32_TOL)
    ac_grads = {hf_name(n): g for n, g in ac["grads"].items()}
    assert ac_grads.keys() == plain["grads"].keys()
    assert max(max_diff(ac_grads[n], g) for n, g in plain["grads"].items()) < FP32_TOL
    assert ac["names"] == plain["names"], "wrapper prefixes are stripped in the export"
    assert bf16["loss"] == pytest.approx(plain["loss"], abs=0.05)
    assert all(g.dtype == torch.float32 for g in bf16["grads"].values()), "fp32 master grads"
    assert all(torch.isfinite(g).all() for g in bf16["grads"].values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_nccl_and_bf16_on_a_gpu(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    write_model(tmp_path / "model", seed=5)
    ranks = min(2, torch.cuda.device_count())
    args = {"model": str(tmp_path / "model"), "out": str(tmp_path), "mode": "gpu", "device": "cuda"}
    asyncio.run(launch(args, ranks=ranks))
    found = load(tmp_path / "gpu.pt")
    assert found["device"].startswith("cuda")
    assert all(math.isfinite(x) for x in found["losses"])
    assert found["losses"][-1] < found["losses"][0], "steps on one batch lower its loss"
    assert found["dtypes"] == ["torch.bfloat16"] and found["devices"] == ["cpu"]
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    assert next(model.parameters()).dtype == torch.bfloat16
