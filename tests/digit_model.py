"""A tiny model that answers the built-in task with a uniformly random digit, so about one
sample in ten is right: for tests that need rewards that differ within a group."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rlfleet.rollout.model_init import write_model

DIGIT_IDS = range(18, 28)
"""The tiny tokenizer's tokens ``0`` ... ``9``."""
EQUALS_ID = 31
"""Its token ``=``, the last of every built-in prompt."""


def write_digit_model(path: Path) -> Path:
    """The tiny model, changed to answer a built-in prompt with a uniformly random digit:
    with every attention and MLP output zeroed, the last hidden state is the embedding of
    ``=`` (normalised), and an untied head gives the ten digit tokens the same large logit
    for it and every other token 0."""
    write_model(path, seed=0)
    weights = load_file(str(path / "model.safetensors"))
    for name in list(weights):
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = torch.zeros_like(weights[name])
    embed = weights["model.embed_tokens.weight"]
    x = embed[EQUALS_ID]
    h = x * torch.rsqrt(x.pow(2).mean() + 1e-6) * weights["model.norm.weight"]
    head = torch.zeros_like(embed)
    head[DIGIT_IDS.start : DIGIT_IDS.stop] = 12 * h / h.pow(2).sum()
    weights["lm_head.weight"] = head
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    return path
