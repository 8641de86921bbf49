"""Weights on disk for the sglang engine: the model's parameters read from safetensors
headers (no torch: the adapter never holds a tensor), the manifest check against them, and
the directory SGLang's ``update_weights_from_disk`` loads an update from.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each
tensor name to ``{"dtype", "shape", "data_offsets"}`` (plus an optional ``__metadata__``),
then the raw bytes; reading the header is enough to know every parameter's name, shape and
dtype.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

from rlfleet.rollout.engine import WeightMismatch
from rlfleet.rollout.records import DType, WeightManifest

SAFETENSORS_DTYPES = {"F32": DType.FLOAT32, "F16": DType.FLOAT16, "BF16": DType.BFLOAT16}
"""safetensors dtype codes of the element types a push may carry."""

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""The format's own limit on the JSON header."""

# What SGLang needs besides the weights to treat a directory as a checkpoint: the loader
# reads the architecture's config; the rest lets the directory also serve as a full model
# directory (tokenizer) where an operator points a fresh server at it.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def read_safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each tensor's safetensors dtype code and shape; ValueError for a file that is not
    safetensors (the message names the file)."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its header size)")
        (size,) = struct.unpack("<Q", head)
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: safetensors header of {size} bytes is too large")
        raw = f.read(size)
    if len(raw) != size:
        raise ValueError(f"{path}: truncated safetensors header")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: safetensors header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            out[name] = (str(entry["dtype"]), tuple(int(d) for d in entry["shape"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: malformed header entry for {name!r}") from None
    return out


def model_parameters(model_dir: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor of the model directory's safetensors files, by Hugging Face name."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir}: no *.safetensors files (the sglang engine reads them)")
    params: dict[str, tuple[str, tuple[int, ...]]] = {}
    for path in files:
        params.update(read_safetensors_header(path))
    return params


def check_manifest(
    manifest: WeightManifest, params: dict[str, tuple[str, tuple[int, ...]]]
) -> None:
    """Raise ``WeightMismatch`` naming the first tensor that is not a parameter of the model
    with the same shape and dtype."""
    seen: set[str] = set()
    for spec in manifest.tensors:
        if spec.name in seen:
            raise WeightMismatch(f"{spec.name}: listed twice in the manifest")
        seen.add(spec.name)
        if spec.name not in params:
            raise WeightMismatch(f"{spec.name}: not a parameter of the model")
        code, shape = params[spec.name]
        if shape != spec.shape:
            raise WeightMismatch(
                f"{spec.name}: shape {list(spec.shape)} does not match the model's {list(shape)}"
            )
        model_dtype = SAFETENSORS_DTYPES.get(code)
        if model_dtype is not spec.dtype:
            raise WeightMismatch(
                f"{spec.name}: dtype {spec.dtype} does not match the model's {model_dtype or code}"
            )


def stage_update(model_dir: Path, update_file: Path, dest: Path) -> Path:
    """Make ``dest`` a directory SGLang's disk loader reads the update from: the model's
    config (and tokenizer) files and the update's safetensors file, nothing else, so only
    the pushed tensors are loaded (a partial update leaves the other parameters as they
    are). Links where the filesystem allows, copies otherwise. Returns ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in MODEL_FILES:
        src = model_dir / name
        if src.is_file():
            shutil.copyfile(src, dest / name)
    target = dest / "model.safetensors"
    try:
        os.link(update_file, target)
    except OSError:
        # Another filesystem (the spool and the staging area apart): copy.
        shutil.copyfile(update_file, target)
    return dest
