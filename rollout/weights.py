"""Weight updates as bytes: the sender's side (an HF model directory or a state dict, read
tensor by tensor) and the receiver's spool (a safetensors file written as the bytes arrive).

Neither side ever holds more than one bucket of tensor data: the sender reads each bucket
from the model's files (or copies it out of a tensor) just before it is sent, the receiver
writes each chunk to disk as it arrives and hashes it on the way. The spool is a plain
safetensors file: its header is written from the manifest before any data, so the engine
loads it with ``safetensors.safe_open`` like any checkpoint shard.

The wire order is fixed: the manifest's tensors, their raw bytes concatenated in manifest
order (little-endian, C order), cut into chunks of any size; a checksum over all of them
(``rollout/checksum.py``).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import struct
import sys
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from io import FileIO
from pathlib import Path
from typing import Any

from rlfleet.rollout import checksum as checksums
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

    ``put`` each chunk (``put_blocking`` from a thread, or ``write`` it synchronously), then
    ``finish`` with the sender's checksum (its digest in ``checksum``, an algorithm of
    ``rollout/checksum.py``); every check that can fail early does (more bytes than announced
    fail at the chunk that overflows, before it is written).

    ``put`` hands the chunk to two threads, one hashing and one writing (the hashes and
    ``os.pwrite`` release the GIL), and returns at once while fewer than ``depth`` chunks are
    in their hands: the caller receives the next chunk meanwhile. The spool holds at most
    ``depth`` chunks, so memory stays bounded by the bucket size, not the model's.
    """

    def __init__(
        self,
        manifest: WeightManifest,
        path: Path,
        depth: int = 2,
        checksum: str = checksums.DEFAULT,
    ) -> None:
        if depth < 1:
            raise ValueError("depth: must be >= 1")
        self.checksum = checksum
        self._hash = checksums.new_hasher(checksum)
        self.manifest = manifest
        self.path = path
        self.expected = manifest.nbytes
        self.received = 0
        self.depth = depth
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        header = safetensors_header(manifest.tensors)
        self._write_at(header, 0)
        self._offset = len(header)
        # One worker each: the hash sees the chunks in order; writes carry their offset.
        self._hasher = ThreadPoolExecutor(1, "spool-hash")
        self._writer = ThreadPoolExecutor(1, "spool-write")
        self._pending: deque[tuple[Future[None], Future[None]]] = deque()

    def _write_at(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view = view[written:]
            offset += written

    def _take(self, size: int) -> int:
        """Count ``size`` more bytes in; their offset in the file."""
        if self.received + size > self.expected:
            raise CorruptStream(f"data: more than the {self.expected} bytes the manifest announces")
        self.received += size
        offset = self._offset
        self._offset += size
        return offset

    def write(self, data: bytes | memoryview) -> None:
        """Append one chunk, here and now (blocking file I/O)."""
        offset = self._take(len(data))
        self._write_at(data, offset)
        self._hash.update(data)

    def _submit(self, data: bytes | memoryview) -> None:
        offset = self._take(len(data))
        hashed = self._hasher.submit(self._hash.update, data)
        written = self._writer.submit(self._write_at, data, offset)
        self._pending.append((hashed, written))

    def _full(self) -> bool:
        """Whether the oldest chunk must be waited for (``depth`` are in progress, or it is
        done and only needs collecting)."""
        pending = self._pending
        return len(pending) > self.depth or bool(pending and all(f.done() for f in pending[0]))

    async def put(self, data: bytes | memoryview) -> None:
        """Append one chunk in the background; waits while ``depth`` chunks are in progress.
        ``data`` must not change until ``drain``. Raises ``CorruptStream`` for a chunk past
        the announced size, and the error of an earlier chunk's write."""
        self._submit(data)
        while self._full():
            # (Shielded: a cancelled receiver must still be able to wait for it in ``drain``.)
            await asyncio.shield(_both(self._pending[0]))
            self._pending.popleft()

    def put_blocking(self, data: bytes | memoryview) -> None:
        """``put`` for a caller that is a thread of its own (the data connection's)."""
        self._submit(data)
        while self._full():
            _both_blocking(self._pending[0])
            self._pending.popleft()

    async def drain(self, *, quiet: bool = False) -> None:
        """Wait for every chunk ``put`` so far; raise the first one's error unless ``quiet``
        (the clean-up path, which only needs the threads to be done with the file)."""
        while self._pending:
            try:
                await asyncio.shield(_both(self._pending[0]))
            except Exception:
                if not quiet:
                    raise
            finally:
                if all(f.done() for f in self._pending[0]):
                    self._pending.popleft()

    def drain_blocking(self, *, quiet: bool = False) -> None:
        """``drain`` for a caller that is a thread of its own."""
        while self._pending:
            try:
                _both_blocking(self._pending[0])
            except Exception:
                if not quiet:
                    raise
            finally:
                self._pending.popleft()

    def finish(self, digest: str | None) -> None:
        """Close the file (after ``drain``); raise ``CorruptStream`` unless every byte
        arrived and hashes to ``digest`` (hex, in the spool's ``checksum`` algorithm; None:
        the stream ended before its last message)."""
        self.close()
        if self.received < self.expected:
            raise CorruptStream(
                f"truncated: the stream ended after {self.received} of {self.expected} bytes"
            )
        if digest is None:
            raise CorruptStream("truncated: the stream ended before its checksum")
        if digest.lower() != (ours := self._hash.hexdigest()):
            raise CorruptStream(
                f"checksum: the data hashes to {ours} ({self.checksum}), the sender said {digest}"
            )

    def close(self) -> None:
        """Let go of the file and the threads (after ``drain``; idempotent)."""
        self._hasher.shutdown(wait=False)
        self._writer.shutdown(wait=False)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


async def _both(work: tuple[Future[None], Future[None]]) -> None:
    """Wait for both of ``work`` (never leaving one running), then raise the first error."""
    outcomes = await asyncio.gather(*map(asyncio.wrap_future, work), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def _both_blocking(work: tuple[Future[None], Future[None]]) -> None:
    wait(work)
    for f in work:
        f.result()


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

    def read_into(self, index: int, start: int, out: memoryview) -> None:
        """Fill ``out`` with bytes ``[start, start + len(out))`` of tensor ``index`` (called
        in order); sources override it to skip the copy that ``read`` makes."""
        out[:] = self.read(index, start, len(out))

    def close(self) -> None:
        """Let go of what ``read`` keeps open."""

    def buckets(self, bucket_bytes: int, buffers: int = 1) -> Generator[memoryview, None, None]:
        """All tensors' bytes in manifest order, cut into buckets of ``bucket_bytes`` (the
        last one shorter); small tensors share a bucket, large ones span several. Each is a
        view of one of ``buffers`` buffers, taken in turn: a bucket stays as it is until
        ``buffers`` more have been asked for (with one, use it before asking for the next)."""
        if bucket_bytes < 1:
            raise ValueError("bucket_bytes: must be >= 1")
        if buffers < 1:
            raise ValueError("buffers: must be >= 1")
        total = sum(t.nbytes for t in self.tensors)
        # Buffers reused: no fresh allocation (page faults, zeroing) per bucket.
        ring = [memoryview(bytearray(min(bucket_bytes, total))) for _ in range(buffers)]
        buffer, turn, size = ring[0], 0, 0
        try:
            for i, spec in enumerate(self.tensors):
                done = 0
                while done < spec.nbytes:
                    take = min(bucket_bytes - size, spec.nbytes - done)
                    self.read_into(i, done, buffer[size : size + take])
                    size += take
                    done += take
                    if size == bucket_bytes:
                        yield buffer
                        turn += 1
                        buffer, size = ring[turn % buffers], 0
            if size:
                yield buffer[:size]
        finally:
            self.close()

    def chunks(self, bucket_bytes: int) -> Iterator[bytes]:
        """``buckets``, each copied out."""
        for view in self.buckets(bucket_bytes):
            yield bytes(view)


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

        self._open: tuple[Path, FileIO] | None = None

    def read(self, index: int, start: int, length: int) -> bytes:
        out = bytearray(length)
        self.read_into(index, start, memoryview(out))
        return bytes(out)

    def read_into(self, index: int, start: int, out: memoryview) -> None:
        stored = self.stored[index]
        if self._open is None or self._open[0] != stored.path:
            self.close()
            self._open = (stored.path, stored.path.open("rb", buffering=0))
        f = self._open[1]
        f.seek(stored.offset + start)
        done = 0
        while done < len(out):
            n = f.readinto(out[done:])
            if not n:
                raise WeightFileError(f"{stored.path}: {stored.spec.name}: file truncated")
            done += n

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

    def _host(self, index: int) -> Any:
        if self._current is None or self._current[0] != index:
            # One tensor on the host at a time (a copy only when it is elsewhere).
            self._current = (index, self._tensors[index].detach().to("cpu").contiguous())
        return self._current[1]

    def read(self, index: int, start: int, length: int) -> bytes:
        # torch offers no buffer view of bf16 without numpy, which is not a dependency:
        # the bytes are copied from the tensor's address (``t`` stays referenced meanwhile).
        t = self._host(index)
        return ctypes.string_at(t.data_ptr() + start, length)

    def read_into(self, index: int, start: int, out: memoryview) -> None:
        t = self._host(index)
        if len(out):
            ctypes.memmove(
                (ctypes.c_char * len(out)).from_buffer(out), t.data_ptr() + start, len(out)
            )

    def close(self) -> None:
        self._current = None


class StreamSource(WeightSource):
    """Tensors that arrive one at a time from an iterator of ``(name, tensor)`` pairs, in the
    order of ``tensors`` (a learner gathering its shards as the push goes): nothing but the
    current tensor is held. A stream is read once: a second pass (a retried push) raises
    ``WeightFileError``, as does a pair that does not match its spec."""

    def __init__(self, tensors: Sequence[TensorSpec], stream: Iterable[tuple[str, Any]]) -> None:
        if sys.byteorder != "little":
            raise WeightFileError("pushing tensors needs a little-endian host")
        super().__init__(tensors)
        self._stream = iter(stream)
        self._taken = 0  # pairs taken from the stream
        self._current: tuple[int, Any] | None = None

    def _host(self, index: int) -> Any:
        if self._current is not None and self._current[0] == index:
            return self._current[1]
        if index < self._taken:
            raise WeightFileError(f"{self.tensors[index].name}: a stream is read once, in order")
        while self._taken <= index:  # (pairs of tensors with no bytes are never read)
            spec = self.tensors[self._taken]
            pair = next(self._stream, None)
            if pair is None:
                raise WeightFileError(f"{spec.name}: the stream ended before this tensor")
            name, t = pair
            got = (name, str(t.dtype).removeprefix("torch."), tuple(t.shape))
            if got != (spec.name, spec.dtype.value, spec.shape):
                raise WeightFileError(f"{spec.name}: the stream sent {got} for this tensor")
            self._taken += 1
        self._current = (index, t.detach().to("cpu").contiguous())
        return self._current[1]

    def read(self, index: int, start: int, length: int) -> bytes:
        return ctypes.string_at(self._host(index).data_ptr() + start, length)

    def read_into(self, index: int, start: int, out: memoryview) -> None:
        t = self._host(index)
        if len(out):
            ctypes.memmove(
                (ctypes.c_char * len(out)).from_buffer(out), t.data_ptr() + start, len(out)
            )

    def close(self) -> None:
        self._current = None


def open_source(source: Path | Mapping[str, Any]) -> WeightSource:
    """A model directory or a ``{name: tensor}`` mapping as a ``WeightSource``."""
    if isinstance(source, Path):
        return DirectorySource(source)
    return TensorSource(source)
