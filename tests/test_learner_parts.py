"""The learner's pieces in one process, no process group: the LR schedule, clipping,
layer discovery, HF names, the stream a push reads, and checkpoint files (retention,
partial saves ignored, an exact round trip of weights, optimizer, scheduler and RNG)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from rlfleet.learner.checkpoint import (
    CheckpointConfig,
    TrainerState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from rlfleet.learner.export import (
    exported_parameters,
    hf_name,
    iter_full_tensors,
    tensor_specs,
    write_safetensors,
)
from rlfleet.learner.optim import (
    OptimConfig,
    build_optimizer,
    build_scheduler,
    clip_gradients,
    lr_factor,
)
from rlfleet.learner.parallelize import ParallelConfig, decoder_layers, mixed_precision
from rlfleet.rollout.records import DType, TensorSpec
from rlfleet.rollout.weights import StreamSource, WeightFileError


def test_warmup_then_constant_or_cosine() -> None:
    constant = OptimConfig(warmup_steps=4)
    assert [lr_factor(s, constant) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = OptimConfig(warmup_steps=2, schedule="cosine", total_steps=12, min_lr_ratio=0.1)
    assert lr_factor(1, cosine) == 1.0
    assert lr_factor(2, cosine) == 1.0
    assert lr_factor(7, cosine) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(12, cosine) == pytest.approx(0.1)
    assert lr_factor(50, cosine) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="total_steps"):
        OptimConfig(schedule="cosine")
    with pytest.raises(ValueError, match="max_grad_norm"):
        OptimConfig(max_grad_norm=0)


def test_the_scheduler_follows_the_factor() -> None:
    model = nn.Linear(2, 2)
    config = OptimConfig(lr=0.1, warmup_steps=2)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    seen = []
    for _ in range(3):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.05, 0.1, 0.1])


def test_clipping_returns_the_norm_before_it_and_clips_to_max() -> None:
    model = nn.Linear(3, 1, bias=False)
    model.weight.grad = torch.tensor([[3.0, 4.0, 0.0]])
    assert clip_gradients(model, None) == pytest.approx(5.0)
    assert torch.equal(model.weight.grad, torch.tensor([[3.0, 4.0, 0.0]]))
    assert clip_gradients(model, 1.0) == pytest.approx(5.0)
    assert math.isclose(model.weight.grad.norm().item(), 1.0, rel_tol=1e-5)


def test_mixed_precision_defaults() -> None:
    cpu = mixed_precision(ParallelConfig(), "cpu")
    cuda = mixed_precision(ParallelConfig(), "cuda")
    assert (cpu.param_dtype, cpu.reduce_dtype) == (torch.float32, torch.float32)
    assert (cuda.param_dtype, cuda.reduce_dtype) == (torch.bfloat16, torch.float32)
    bf16 = mixed_precision(ParallelConfig(param_dtype="bfloat16", reduce_dtype="bfloat16"), "cpu")
    assert (bf16.param_dtype, bf16.reduce_dtype) == (torch.bfloat16, torch.bfloat16)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 2)


class Custom(nn.Module):
    """No known layer path: found by the search (the longest list of one class)."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])
        self.blocks = nn.ModuleList([Block() for _ in range(3)])


def test_decoder_layers_known_path_and_search(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from rlfleet.rollout.model_init import write_model

    write_model(tmp_path, seed=0)
    qwen = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert decoder_layers(qwen) is qwen.model.layers
    custom = Custom()
    assert decoder_layers(custom) is custom.blocks
    with pytest.raises(ValueError, match="no stack"):
        decoder_layers(nn.Linear(2, 2))


def test_hf_names_drop_wrapper_parts() -> None:
    assert (
        hf_name("_orig_mod.model.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight")
        == "model.layers.0.mlp.up_proj.weight"
    )
    assert hf_name("model.norm.weight") == "model.norm.weight"


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight


def test_an_unsharded_model_exports_its_parameters_once_each(tmp_path: Path) -> None:
    model = Tied()
    assert [n for n, _ in exported_parameters(model)] == ["embed.weight"]
    assert tensor_specs(model, torch.bfloat16) == [
        TensorSpec(name="embed.weight", dtype=DType.BFLOAT16, shape=(5, 3))
    ]
    out = list(iter_full_tensors(model, bucket_bytes=1, dtype=torch.bfloat16))
    assert [n for n, _ in out] == ["embed.weight"]
    assert torch.equal(out[0][1], model.embed.weight.detach().to(torch.bfloat16))
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(iter_full_tensors(model, bucket_bytes=0))


def stream_of(tensors: dict[str, torch.Tensor]) -> tuple[list[TensorSpec], StreamSource]:
    specs = [
        TensorSpec(name=n, dtype=DType(str(t.dtype).removeprefix("torch.")), shape=tuple(t.shape))
        for n, t in tensors.items()
    ]
    return specs, StreamSource(specs, iter(tensors.items()))


def test_a_stream_source_is_read_once_in_order(tmp_path: Path) -> None:
    tensors = {
        "a": torch.randn(3, 5),
        "empty": torch.zeros(0, 4),
        "b": torch.randn(7).to(torch.bfloat16),
    }
    specs, source = stream_of(tensors)
    path = tmp_path / "w.safetensors"
    write_safetensors(path, specs, iter(tensors.items()), bucket_bytes=7)
    back = load_file(str(path))
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[n], t) for n, t in tensors.items())
    # The same bytes as the push sends.
    assert b"".join(source.chunks(5)) == path.read_bytes()[-sum(s.nbytes for s in specs) :]
    with pytest.raises(WeightFileError, match="read once"):
        list(source.chunks(5))


def test_a_stream_that_does_not_match_its_specs_is_refused() -> None:
    specs, _ = stream_of({"a": torch.zeros(2), "b": torch.zeros(2)})
    with pytest.raises(WeightFileError, match="ended before"):
        list(StreamSource(specs, iter([("a", torch.zeros(2))])).chunks(100))
    with pytest.raises(WeightFileError, match="b: the stream sent"):
        list(StreamSource(specs, iter([("a", torch.zeros(2)), ("c", torch.zeros(2))])).chunks(100))
    with pytest.raises(WeightFileError, match="a: the stream sent"):
        list(StreamSource(specs, iter([("a", torch.zeros(3))])).chunks(100))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    x = torch.randn(4, 3)  # (from the global generator: the RNG state matters)
    loss = model(x).pow(2).mean() + random.random()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_checkpoints_round_trip_exactly_and_keep_the_last_k(tmp_path: Path) -> None:
    config = OptimConfig(lr=0.01, warmup_steps=3)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    root = tmp_path / "ckpt"
    (root / ".step-00000009.partial").mkdir(parents=True)  # a save that died
    for step in range(1, 5):
        train_step(model, optimizer)
        scheduler.step()
        save_checkpoint(
            root,
            TrainerState(step=step, data_position=10 * step, extra={"seen": [step]}),
            model,
            optimizer,
            scheduler,
            CheckpointConfig(keep_last=2),
        )
    assert [s for s, _ in list_checkpoints(root)] == [3, 4]
    latest = latest_checkpoint(root)
    assert latest is not None and latest.name == "step-00000004"
    expected = train_step(model, optimizer)

    torch.manual_seed(123)  # (a fresh model elsewhere, generators elsewhere)
    random.seed(123)
    fresh = nn.Linear(3, 2)
    fresh_optimizer = build_optimizer(fresh, config)
    fresh_scheduler = build_scheduler(fresh_optimizer, config)
    state = load_checkpoint(latest, fresh, fresh_optimizer, fresh_scheduler)
    assert state == TrainerState(step=4, data_position=40, extra={"seen": [4]})
    assert fresh_scheduler.last_epoch == 4
    assert train_step(fresh, fresh_optimizer) == expected
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters(), strict=True)
    )
    assert latest_checkpoint(tmp_path / "none") is None
