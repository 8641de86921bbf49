"""Weight updates as bytes: the sender's side (an HF model directory or a state dict, read
tensor by tensor) and the receiver's spool (a safetensors file written as the bytes arrive).

Neither side ever holds more than one bucket of tensor data: the sender reads each bucket
from the model's files (or copies it out of a tensor) just before it is sent, the receiver
writes each chunk to disk as it arrives and hashes it on the way. The spool is a plain
safetensors file: its header is written from the manifest before any data, so the engine
loads it with ``safetensors.safe_open`` like any checkpoint shard.

The wire order is fixed: the manifest's tensors, their raw bytes concatenated in manifest
order (little-endian, C order), cut into chunks of any size; ``sha256`` over all of them.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import struct
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from rlfleet.rollout.records import DType, TensorSpec, WeightManifest

SAFETENSORS_DTYPES = {DType.FLOAT32: "F32", DType.FLOAT16: "F16", DType.BFLOAT16: "BF16"}
_DTYPES_BY_TAG = {tag: dtype for dtype, tag in SAFETENSORS_DTYPES.items()}
MAX_HEADER_BYTES = 100 << 20
"""safetensors' own bound on a header; a larger one is not a safetensors file."""


class CorruptStream(ValueError):
    """The update's bytes did not arrive whole and intact (too few, too many, or a
    checksum that does not match): the update is refused, nothing is applied."""


class WeightFileError(ValueError):
    """A model directory or file cannot be sent as weights; the message names the file
    and, where it is one tensor's fault, the tensor."""


# -- safetensors headers ---------------------------------------------------------------------


def safetensors_header(tensors: Sequence[TensorSpec]) -> bytes:
    """The bytes that start a safetensors file holding ``tensors`` in this order, back to
    back: an 8-byte little-endian length, then the JSON header padded with spaces to a
    multiple of 8 (as safetensors writes it, so the data stays aligned)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {
            "dtype": SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


@dataclass(frozen=True, kw_only=True)
class StoredTensor:
    """A tensor inside a safetensors file."""

    spec: TensorSpec
    path: Path
    offset: int
    """Where its bytes start in the file."""


def read_safetensors_header(path: Path) -> list[StoredTensor]:
    """The tensors of a safetensors file, in the order their bytes are stored."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise WeightFileError(f"{path}: not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", raw)
        if size > MAX_HEADER_BYTES:
            raise WeightFileError(f"{path}: not a safetensors file (header of {size} bytes)")
        try:
            header = json.loads(f.read(size))
        except ValueError as e:
            raise WeightFileError(f"{path}: not a safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise WeightFileError(f"{path}: not a safetensors file (header is not an object)")
    out = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            tag, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise WeightFileError(f"{path}: {name}: malformed header entry") from None
        dtype = _DTYPES_BY_TAG.get(tag)
        if dtype is None:
            known = ", ".join(_DTYPES_BY_TAG)
            raise WeightFileError(f"{path}: {name}: dtype {tag} cannot be pushed (one of {known})")
        spec = TensorSpec(name=name, dtype=dtype, shape=tuple(int(d) for d in shape))
        if end - begin != spec.nbytes:
            raise WeightFileError(f"{path}: {name}: {end - begin} bytes for shape {spec.shape}")
        out.append(StoredTensor(spec=spec, path=path, offset=8 + size + begin))
    return sorted(out, key=lambda t: t.offset)


def read_tensor_bytes(tensor: StoredTensor) -> bytes:
    """One stored tensor's raw bytes (tests and fakes; engines use safetensors)."""
    with tensor.path.open("rb") as f:
        f.seek(tensor.offset)
        return f.read(tensor.spec.nbytes)


# -- the receiver: spooling a stream to disk -------------------------------------------------


class Spool:
    """Writes an update's bytes to ``path`` (a safetensors file) as they arrive.

    ``write`` each chunk, then ``finish`` with the sender's checksum; every check that can
    fail early does (more bytes than announced fail at the chunk that overflows).
    """

    def __init__(self, manifest: WeightManifest, path: Path) -> None:
        self.manifest = manifest
        self.path = path
        self.expected = manifest.nbytes
        self.received = 0
        self._sha = hashlib.sha256()
        # Unbuffered: each chunk goes to the OS as it arrives (nothing accumulates here).
        self._file = path.open("wb", buffering=0)
        self._write_all(safetensors_header(manifest.tensors))

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            view = view[written or 0 :]

    def write(self, data: bytes | memoryview) -> None:
        """Append one chunk (blocking file I/O: call it off the event loop)."""
        if self.received + len(data) > self.expected:
            raise CorruptStream(f"data: more than the {self.expected} bytes the manifest announces")
        self._write_all(data)
        self._sha.update(data)
        self.received += len(data)

    def finish(self, sha256: str | None) -> None:
        """Close the file; raise ``CorruptStream`` unless every byte arrived and matches
        ``sha256`` (None: the stream ended before its last message)."""
        self._file.close()
        if self.received < self.expected:
            raise CorruptStream(
                f"truncated: the stream ended after {self.received} of {self.expected} bytes"
            )
        if sha256 is None:
            raise CorruptStream("truncated: the stream ended before its sha256")
        if sha256.lower() != self._sha.hexdigest():
            raise CorruptStream(
                f"sha256: the data hashes to {self._sha.hexdigest()}, the sender said {sha256}"
            )

    def close(self) -> None:
        self._file.close()


# -- the sender: reading weights bucket by bucket --------------------------------------------


class WeightSource:
    """Tensors to push: their specs up front, their bytes bucket by bucket."""

    def __init__(self, tensors: Sequence[TensorSpec]) -> None:
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise WeightFileError(f"{dup}: appears twice")
        self.tensors = tuple(tensors)

    def manifest(self, version: int) -> WeightManifest:
        return WeightManifest(version=version, tensors=self.tensors)

    def read(self, index: int, start: int, length: int) -> bytes:
        """Bytes ``[start, start + length)`` of tensor ``index`` (called in order)."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of what ``read`` keeps open."""

    def chunks(self, bucket_bytes: int) -> Iterator[bytes]:
        """All tensors' bytes in manifest order, cut into chunks of ``bucket_bytes`` (the
        last one shorter); small tensors share a chunk, large ones span several."""
        if bucket_bytes < 1:
            raise ValueError("bucket_bytes: must be >= 1")
        pending: list[bytes] = []
        size = 0
        try:
            for i, spec in enumerate(self.tensors):
                done = 0
                while done < spec.nbytes:
                    take = min(bucket_bytes - size, spec.nbytes - done)
                    pending.append(self.read(i, done, take))
                    size += take
                    done += take
                    if size == bucket_bytes:
                        yield pending[0] if len(pending) == 1 else b"".join(pending)
                        pending, size = [], 0
            if pending:
                yield b"".join(pending)
        finally:
            self.close()


class DirectorySource(WeightSource):
    """The ``*.safetensors`` files of a Hugging Face model directory, read straight from
    the files (safetensors stores raw little-endian bytes, which is the wire format)."""

    def __init__(self, model_dir: Path) -> None:
        if not model_dir.is_dir():
            raise WeightFileError(f"{model_dir}: not a directory")
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise WeightFileError(f"{model_dir}: no *.safetensors files")
        self.stored = [t for f in files for t in read_safetensors_header(f)]
        super().__init__([t.spec for t in self.stored])

        self._open: tuple[Path, BinaryIO] | None = None

    def read(self, index: int, start: int, length: int) -> bytes:
        stored = self.stored[index]
        if self._open is None or self._open[0] != stored.path:
            self.close()
            self._open = (stored.path, stored.path.open("rb"))
        f = self._open[1]
        f.seek(stored.offset + start)
        data = f.read(length)
        if len(data) != length:
            raise WeightFileError(f"{stored.path}: {stored.spec.name}: file truncated")
        return data

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None


class TensorSource(WeightSource):
    """In-memory tensors (a learner's state dict); tensors on an accelerator are copied
    to the host one at a time."""

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        import torch

        dtypes = {
            torch.float32: DType.FLOAT32,
            torch.float16: DType.FLOAT16,
            torch.bfloat16: DType.BFLOAT16,
        }
        if sys.byteorder != "little":
            raise WeightFileError("pushing tensors needs a little-endian host")
        specs = []
        for name, t in tensors.items():
            dtype = dtypes.get(t.dtype)
            if dtype is None:
                raise WeightFileError(f"{name}: dtype {t.dtype} cannot be pushed")
            specs.append(TensorSpec(name=name, dtype=dtype, shape=tuple(t.shape)))
        super().__init__(specs)
        self._tensors = list(tensors.values())

        self._current: tuple[int, Any] | None = None

    def read(self, index: int, start: int, length: int) -> bytes:
        if self._current is None or self._current[0] != index:
            # One tensor on the host at a time (a copy only when it is elsewhere).
            self._current = (index, self._tensors[index].detach().to("cpu").contiguous())
        t = self._current[1]
        # A copy of just this piece: torch offers no buffer view of bf16 without numpy,
        # which is not a dependency. ``t`` stays referenced while the copy is made.
        return ctypes.string_at(t.data_ptr() + start, length)

    def close(self) -> None:
        self._current = None


def open_source(source: Path | Mapping[str, Any]) -> WeightSource:
    """A model directory or a ``{name: tensor}`` mapping as a ``WeightSource``."""
    if isinstance(source, Path):
        return DirectorySource(source)
    return TensorSource(source)
