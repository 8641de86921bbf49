"""``rlfleet model init``: a loadable, deterministic model directory made with no hub."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from rlfleet.rollout.model_init import EOS, write_model

FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}
TEXTS = [
    "What is 12 + 34? The answer is \\boxed{46}.",
    "def f(x):\n\treturn x ** 2  # squares\n",
    "héllo wörld, naïve café 🙂 — ünïcode",
    "  leading and trailing spaces  \n\n",
    f"special {EOS} in the middle",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    write_model(out, seed=1)
    return out


def test_writes_an_hf_directory(model_dir: Path) -> None:
    assert {p.name for p in model_dir.iterdir()} == FILES
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["model_type"] == "qwen2"
    assert (config["hidden_size"], config["num_hidden_layers"]) == (64, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["tie_word_embeddings"] is True


def test_same_seed_same_bytes_other_seed_other_weights(model_dir: Path, tmp_path: Path) -> None:
    write_model(tmp_path / "again", seed=1)
    write_model(tmp_path / "other", seed=2)
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (model_dir / name).read_bytes(), name
    other = (tmp_path / "other" / "model.safetensors").read_bytes()
    assert other != (model_dir / "model.safetensors").read_bytes()


def test_init_leaves_the_global_generator_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    write_model(tmp_path / "m", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_model_loads_with_tied_embeddings(model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (
        model.config.vocab_size
        == Tokenizer.from_file(str(model_dir / "tokenizer.json")).get_vocab_size()
    )
    out = model(torch.tensor([[1, 2, 3]])).logits
    assert out.shape == (1, 3, model.config.vocab_size) and torch.isfinite(out).all()


def test_tokenizer_loads_and_tokenises_as_trained(model_dir: Path) -> None:
    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    fast = PreTrainedTokenizerFast.from_pretrained(model_dir)
    # transformers 5.x swaps in Qwen2Tokenizer for a qwen2 directory: it rebuilds the
    # pipeline from the vocabulary, and the tokenizer was trained with that same pipeline.
    auto = AutoTokenizer.from_pretrained(model_dir)
    assert fast.eos_token == fast.pad_token == EOS
    assert fast.eos_token_id == auto.eos_token_id == raw.token_to_id(EOS) == 0
    for text in TEXTS:
        ids = raw.encode(text).ids
        assert fast.encode(text) == ids, text
        assert auto.encode(text) == ids, text
        assert fast.decode(ids) == raw.decode(ids, skip_special_tokens=False) == text, text
    assert len(raw.encode(TEXTS[0]).ids) < len(TEXTS[0]) / 2, "the BPE merged nothing"


def test_cli_writes_the_directory(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    run = subprocess.run(
        [sys.executable, "-m", "rlfleet.cli", "model", "init", str(out), "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert {p.name for p in out.iterdir()} == FILES
    again = subprocess.run(
        [sys.executable, "-m", "rlfleet.cli", "model", "init", str(out), "--force"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0, again.stderr
