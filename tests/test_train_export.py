"""`rlfleet train` ends by exporting the policy as an HF-format directory (RUN_DIR/final/):
its weights are the learner's at the last step, and the torch engine loaded from it decodes
greedily the same tokens as the learner's model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlfleet.learner.checkpoint import latest_checkpoint, load_checkpoint
from rlfleet.learner.config import TrainConfig, from_mapping
from rlfleet.learner.optim import build_optimizer, build_scheduler
from rlfleet.rollout.records import SampleRequest, SamplingParams
from rlfleet.rollout.torch_engine import HFTokenizer, TorchEngine, TorchEngineConfig

RLFLEET = [sys.executable, "-m", "rlfleet.cli"]
PROMPTS = ("3+4=", "9-2=", "def add(a, b):")
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "run"
    small = ["rollout.prompts_per_step=4", "rollout.n=4", "fleet.sandbox_workers=1"]
    # A random policy mostly scores 0 on every sample of 4 prompts (no gradient): weight
    # decay makes sure every step changes the weights.
    small.append("optim.weight_decay=0.5")
    r = subprocess.run(
        [*RLFLEET, "train", "--run-dir", str(path), "--steps", "2", "--seed", "1", *small],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return path


def learner_model(run_dir: Path) -> torch.nn.Module:
    """The learner's model at the end of the run: the initial policy with the last
    checkpoint loaded, as ``--resume`` would."""
    config: TrainConfig = from_mapping(
        TrainConfig, json.loads((run_dir / "config.json").read_text())
    )
    model = AutoModelForCausalLM.from_pretrained(str(run_dir / "policy"), dtype=torch.float32)
    optimizer = build_optimizer(model, config.optim)
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    assert checkpoint is not None and checkpoint.name == "step-00000002"
    with torch.random.fork_rng(devices=[]):  # (the checkpoint sets the RNG states)
        load_checkpoint(checkpoint, model, optimizer, build_scheduler(optimizer, config.optim))
    return model.eval()


def greedy(model: torch.nn.Module, prompt: list[int], eos: int | None) -> list[int]:
    """Greedy decoding by full forward passes (no cache: nothing shared with the engine)."""
    ids = list(prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            token = int(logits.argmax())
            out.append(token)
            if token == eos:
                break
            ids.append(token)
    return out


def test_the_final_directory_holds_the_learners_weights(run_dir: Path, require_root: None) -> None:
    final = run_dir / "final"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in final.iterdir()
    }
    exported = load_file(str(final / "model.safetensors"))
    learner = dict(learner_model(run_dir).named_parameters())
    initial = load_file(str(run_dir / "policy" / "model.safetensors"))
    assert set(exported) == set(initial)  # (the tied head stored once, as the source has it)
    for name, tensor in exported.items():
        assert torch.equal(tensor, learner[name].detach()), name
    assert any(not torch.equal(exported[n], initial[n]) for n in exported), "no step applied"


async def test_the_torch_engine_decodes_as_the_learner(run_dir: Path, require_root: None) -> None:
    model = learner_model(run_dir)
    final = run_dir / "final"
    tokenizer = HFTokenizer(final)
    engine = TorchEngine(TorchEngineConfig(model=final, threads=1))
    try:
        for i, text in enumerate(PROMPTS):
            prompt = tokenizer.encode(text)
            request = SampleRequest(
                key=f"p{i}",
                prompt_token_ids=tuple(prompt),
                sampling=SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.0),
            )
            got = [t async for chunk in engine.generate(request) for t in chunk.token_ids]
            assert got == greedy(model, prompt, tokenizer.eos_token_id), text
    finally:
        await engine.close()
