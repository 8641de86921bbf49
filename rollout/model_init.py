"""``rlfleet model init``: a small HF-format model directory made here, with no hub access.

The directory holds a randomly initialised Qwen2 causal LM (``config.json``,
``model.safetensors``, ``generation_config.json``) and a byte-level BPE tokenizer trained on
a small built-in text (``tokenizer.json``, ``tokenizer_config.json``). Both engines load it;
tests, benchmarks and demos use it instead of downloading a model.

The tokenizer is trained with Qwen2's own normaliser and pre-tokeniser (the ones
``transformers.Qwen2Tokenizer`` rebuilds from the vocabulary), because transformers 5.x
``AutoTokenizer`` on a ``model_type: qwen2`` directory swaps in ``Qwen2Tokenizer``: with the
same pipeline both tokenise identically. The torch engine still loads the tokenizer with
``PreTrainedTokenizerFast`` (exactly ``tokenizer.json``).

Same preset and seed: the same bytes in every file (for a given transformers version, which
``config.json`` records).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

Preset = Literal["tiny"]
PRESETS: tuple[Preset, ...] = ("tiny",)

EOS = "<|endoftext|>"
"""End of sequence and padding (Qwen's convention); id 0."""
SPECIAL_TOKENS = (EOS, "<|im_start|>", "<|im_end|>")

# transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

TRAINING_TEXT = (
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 42 50 64 99 100 128 256 1000",
    "What is 12 + 34? The answer is 46.",
    "What is 7 * 8? 7 * 8 = 56, so the answer is \\boxed{56}.",
    "Compute 100 - 37. We subtract: 100 - 37 = 63. The answer is \\boxed{63}.",
    "If x = 3 and y = 4, then x^2 + y^2 = 9 + 16 = 25, and sqrt(25) = 5.",
    "Let a = 2. Then 2a + 1 = 5 and a / 2 = 1. Solve for x: 3x - 6 = 0, so x = 2.",
    "The sum of the first ten numbers is 55. Half of 90 is 45. Twice 21 is 42.",
    "Question: how many apples are left? Answer: there are 3 apples left.",
    "Read the input, compute the result, and print it on one line.",
    "The quick brown fox jumps over the lazy dog. A small model learns to add numbers.",
    "def add(a, b):\n    return a + b\n",
    "import sys\n\nfor line in sys.stdin:\n    n = int(line)\n    print(n * 2)\n",
    "class Counter:\n    def __init__(self):\n        self.count = 0\n\n"
    "    def step(self):\n        self.count += 1\n        return self.count\n",
    "if x > 0 and not done:\n    print('yes')\nelif x == 0:\n    pass\nelse:\n    print(\"no\")\n",
    "while True:\n    try:\n        value = input()\n    except EOFError:\n        break\n",
    "from math import sqrt\nnums = [int(t) for t in input().split()]\n"
    "print(sum(nums), max(nums))\n",
    "with open(path) as f:\n    data = f.read()\nreturn None if not data else len(data)\n",
    "lambda x: x % 10; yield from range(3); assert len(xs) == 3; global n; raise ValueError",
)


@dataclass(frozen=True, kw_only=True)
class TinyShape:
    """The model's size; the vocabulary comes from the trained tokenizer."""

    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 128
    max_positions: int = 2048
    tokenizer_vocab: int = 512
    """Upper bound given to the BPE trainer (the text is small: it stops earlier)."""


SHAPES: dict[Preset, TinyShape] = {"tiny": TinyShape()}


def build_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE with Qwen2's normaliser, pre-tokeniser and decoder, trained on
    ``TRAINING_TEXT`` (deterministic: the same vocabulary and merges every time)."""
    tok = Tokenizer(
        BPE(
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(TRAINING_TEXT), trainer)
    return tok


def tokenizer_config(shape: TinyShape) -> dict[str, object]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": None,
        "bos_token": None,
        "model_max_length": shape.max_positions,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "errors": "replace",
    }


def model_config(shape: TinyShape, tok: Tokenizer) -> Qwen2Config:
    eos_id = tok.token_to_id(EOS)
    return Qwen2Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        dtype="float32",
    )


def write_model(out_dir: Path, preset: Preset = "tiny", seed: int = 0) -> None:
    """Write the preset's model directory into ``out_dir`` (created if missing)."""
    shape = SHAPES[preset]
    tok = build_tokenizer(shape.tokenizer_vocab)
    config = model_config(shape, tok)
    # Random init draws from torch's global generator: fork it so the caller's stream is
    # left as it was, and seed the fork so the weights depend on ``seed`` alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.architectures = [type(model).__name__]  # (save_pretrained would set it)
    config.save_pretrained(out_dir)
    # The tied ``lm_head.weight`` is ``model.embed_tokens.weight``: stored once, as
    # ``save_pretrained`` does (written here directly to keep its progress bar off stderr).
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    eos_id = tok.token_to_id(EOS)
    GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id).save_pretrained(
        out_dir
    )
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(shape), indent=2, sort_keys=True) + "\n"
    )
