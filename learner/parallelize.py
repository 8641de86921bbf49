"""FSDP2 as a transform: a model built without any parallelism goes in, the same model with
every decoder layer (then the root) sharded over the mesh comes out.

Each decoder layer is its own FSDP unit (its parameters are gathered just before it runs
and freed after); the root unit holds the rest (embeddings, final norm, LM head, which
therefore stay together when the embeddings are tied to the head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

DTypeName = Literal["float32", "bfloat16"]

LAYER_PATHS = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers")
"""Where causal LMs of transformers keep their decoder layers (Qwen2, Llama, Mistral: the
first); other models fall back to the search in ``decoder_layers``."""


@dataclass(frozen=True, kw_only=True)
class ParallelConfig:
    param_dtype: DTypeName | None = None
    """Dtype of the gathered parameters that forward and backward compute with (the sharded
    master copy keeps its own). None: bfloat16 on CUDA, float32 on CPU."""
    reduce_dtype: DTypeName | None = None
    """Dtype gradients are reduced across ranks in. None: float32 (a bf16 sum over ranks
    loses bits that the fp32 master weights would keep)."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in backward instead of keeping them."""
    reshard_after_forward: bool = True
    """Free each layer's gathered parameters after forward (gather again for backward):
    less memory, one more all-gather per layer."""


def mixed_precision(config: ParallelConfig, device_type: str) -> MixedPrecisionPolicy:
    param = config.param_dtype or ("bfloat16" if device_type == "cuda" else "float32")
    reduce = config.reduce_dtype or "float32"
    return MixedPrecisionPolicy(
        param_dtype=getattr(torch, param), reduce_dtype=getattr(torch, reduce)
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers: a known path, else the longest ``ModuleList``
    whose entries are all of one class."""
    for path in LAYER_PATHS:
        try:
            found = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(found, nn.ModuleList):
            return found
    stacks = [
        m
        for m in model.modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(x) for x in m}) == 1
    ]
    if not stacks:
        raise ValueError(f"{type(model).__name__}: no stack of decoder layers found")
    return max(stacks, key=len)


def parallelize(model: nn.Module, mesh: DeviceMesh, config: ParallelConfig) -> nn.Module:
    """Shard ``model`` (in place, and returned) over ``mesh``: optional activation
    checkpointing per layer, then ``fully_shard`` per layer, then the root."""
    layers = decoder_layers(model)
    if config.activation_checkpointing:
        for i, layer in enumerate(layers):
            layers[i] = checkpoint_wrapper(layer)
    policy = mixed_precision(config, mesh.device_type)
    for i, layer in enumerate(layers):
        # The last layer's parameters are needed again at once by backward: keep them.
        reshard = config.reshard_after_forward and i < len(layers) - 1
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    fully_shard(
        model, mesh=mesh, mp_policy=policy, reshard_after_forward=config.reshard_after_forward
    )
    return model
