"""The weight-push half of ``rlfleet bench rollout``, measured in the same run as its
baseline.

Weight push (``bench_weight_push``): a model directory's safetensors pushed through
UpdateWeights to a rollout server in another process (whose engine applies nothing, so the
figure is the transport: read, hash, send, receive, spool to disk, hash, check), against
the same bytes over a raw loopback TCP socket between the same two kinds of process (read
from the same file, received into a fixed buffer and dropped), and against the ceiling gRPC
itself sets: the same buckets as raw bytes over a bare client-streaming method of the same
server (no protobuf, no hashing, no disk). Also measured: the receiving server's peak
resident memory above its resting size during a push (after one unmeasured warm-up push,
which also pays the server's one-time allocations), to compare with the bucket size and the
model size.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

import rlfleet
from rlfleet.rollout.client import ClientConfig, RolloutClient, channel_options
from rlfleet.rollout.records import DType, TensorSpec
from rlfleet.rollout.weights import safetensors_header

SINK_SERVER = """
import asyncio, sys
import grpc
from prometheus_client import CollectorRegistry
from rlfleet.grpc_server import ServerConfig
from rlfleet.rollout.records import EngineStatus
from rlfleet.rollout.servicer import ServiceConfig, build_rollout_server

class SinkEngine:
    # Takes any manifest and applies nothing: what is measured is the transport.
    version = 0
    tokenizer = None
    def check_manifest(self, manifest): pass
    async def update_weights(self, update): self.version = update.manifest.version
    def status(self):
        return EngineStatus(engine="sink", model="", version=self.version, running=0,
                            queued=0, device="cpu")
    async def close(self): pass

async def bare(requests, context):
    # The ceiling: the same buckets as raw bytes, no proto, no hashing, no disk.
    total = 0
    async for message in requests:
        total += len(message)
    return total.to_bytes(8, "little")

async def main():
    srv, _ = build_rollout_server(ServerConfig(port=0), ServiceConfig(spool_dir=sys.argv[1]),
                                  SinkEngine(), None, CollectorRegistry())
    handler = grpc.stream_unary_rpc_method_handler(bare)
    srv.server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("rlfleet.bench.Sink", {"Push": handler}),))
    await srv.start()
    print(srv.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

BARE_METHOD = "/rlfleet.bench.Sink/Push"

TCP_SINK = """
import socket, struct, sys
bucket = int(sys.argv[1])
with socket.create_server(("127.0.0.1", 0)) as server:
    print(server.getsockname()[1], flush=True)
    while True:
        conn, _ = server.accept()
        buf = bytearray(bucket)
        view = memoryview(buf)
        total = 0
        with conn:
            while (n := conn.recv_into(view)):
                total += n
            conn.sendall(struct.pack("<Q", total))
"""


@dataclass(frozen=True, kw_only=True)
class WeightPushFigures:
    bytes: int
    bucket_bytes: int
    push_s: float
    """Best UpdateWeights push, client call to applied."""
    tcp_s: float
    """Best raw loopback TCP transfer of the same bytes."""
    grpc_s: float
    """Best transfer of the same buckets over a bare gRPC client stream (the ceiling)."""
    receiver_peak_extra_bytes: int
    """The server's peak resident memory during a push, above its size before it."""

    @property
    def ratio(self) -> float:
        """UpdateWeights against raw TCP."""
        return self.tcp_s / self.push_s

    @property
    def grpc_ratio(self) -> float:
        """UpdateWeights against bare gRPC."""
        return self.grpc_s / self.push_s

    def lines(self) -> list[str]:
        mb = self.bytes / 1e6
        return [
            f"weight push: {mb:.0f} MB in {self.bucket_bytes / 2**20:g} MiB buckets: "
            f"UpdateWeights {mb / self.push_s:.0f} MB/s, raw TCP {mb / self.tcp_s:.0f} MB/s "
            f"({self.ratio:.2f}x of raw), bare gRPC {mb / self.grpc_s:.0f} MB/s "
            f"({self.grpc_ratio:.2f}x of bare gRPC; bare gRPC is {self.tcp_s / self.grpc_s:.2f}x "
            "of raw)",
            f"receiver peak memory above rest: {self.receiver_peak_extra_bytes / 2**20:.1f} MiB "
            f"(bucket {self.bucket_bytes / 2**20:.0f} MiB, model {self.bytes / 2**20:.0f} MiB)",
        ]


def write_model(directory: Path, size_bytes: int, tensor_bytes: int = 8 << 20) -> Path:
    """A model directory with one safetensors file of float32 tensors, ``size_bytes`` in all
    (random contents: nothing on the way may compress it)."""
    count = max(1, size_bytes // tensor_bytes)
    specs = [
        TensorSpec(name=f"model.layers.{i}.weight", dtype=DType.FLOAT32, shape=(tensor_bytes // 4,))
        for i in range(count)
    ]
    block = os.urandom(1 << 20)
    with (directory / "model.safetensors").open("wb") as f:
        f.write(safetensors_header(specs))
        for _ in range(count * tensor_bytes // len(block)):
            f.write(block)
    return directory


def _proc_status(pid: int, key: str) -> int:
    """``VmRSS`` / ``VmHWM`` of a process, in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) << 10
    raise KeyError(key)


def _reset_peak(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def _start(script: str, *args: str) -> tuple[asyncio.subprocess.Process, int]:
    env = dict(os.environ)
    root = str(Path(rlfleet.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *args, stdout=asyncio.subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    port = int(await asyncio.wait_for(proc.stdout.readline(), 60))
    return proc, port


def _tcp_send(port: int, path: Path, data_offset: int, bucket: int) -> float:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as conn, path.open("rb") as f:
        f.seek(data_offset)
        sent = 0
        while chunk := f.read(bucket):
            conn.sendall(chunk)
            sent += len(chunk)
        conn.shutdown(socket.SHUT_WR)
        (received,) = struct.unpack("<Q", conn.recv(8))
    assert received == sent
    return time.perf_counter() - t0


def _file_buckets(path: Path, data_offset: int, bucket: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(data_offset)
        while chunk := f.read(bucket):
            yield chunk


async def _grpc_send(channel: grpc.aio.Channel, path: Path, data_offset: int, bucket: int) -> float:
    """The same buckets over the sink's bare method, read one ahead in a thread as
    ``push_weights`` reads them."""
    t0 = time.perf_counter()
    call = channel.stream_unary(BARE_METHOD)()
    buckets = _file_buckets(path, data_offset, bucket)
    end = b""
    ahead = asyncio.ensure_future(asyncio.to_thread(next, buckets, end))
    sent = 0
    while (chunk := await ahead) != end:
        ahead = asyncio.ensure_future(asyncio.to_thread(next, buckets, end))
        await call.write(chunk)
        sent += len(chunk)
    await call.done_writing()
    received = int.from_bytes(await call, "little")
    assert received == sent
    return time.perf_counter() - t0


async def bench_weight_push(
    size_mb: int = 256, bucket_mb: int = 8, repeats: int = 3, work_dir: Path | None = None
) -> WeightPushFigures:
    """Push ``size_mb`` MB through UpdateWeights, bare gRPC and raw TCP, ``repeats`` times
    each, alternating; the best of each."""
    bucket = bucket_mb << 20
    with tempfile.TemporaryDirectory(prefix="rlfleet-bench-", dir=work_dir) as tmp:
        model = Path(tmp) / "model"
        spool = Path(tmp) / "spool"
        model.mkdir()
        spool.mkdir()
        write_model(model, size_mb << 20)
        with (model / "model.safetensors").open("rb") as f:
            data_offset = 8 + struct.unpack("<Q", f.read(8))[0]
        total = (model / "model.safetensors").stat().st_size - data_offset
        server, grpc_port = await _start(SINK_SERVER, str(spool))
        sink, tcp_port = await _start(TCP_SINK, str(bucket))
        push_s, tcp_s, grpc_s, peak = [], [], [], 0
        path = model / "model.safetensors"
        config = ClientConfig()
        try:
            async with (
                RolloutClient(f"127.0.0.1:{grpc_port}", config) as client,
                grpc.aio.insecure_channel(
                    f"127.0.0.1:{grpc_port}", channel_options(config)
                ) as channel,
            ):
                await client.push_weights(model, 1, bucket)  # warm-up
                for version in range(2, repeats + 2):
                    rest = _proc_status(server.pid, "VmRSS")
                    _reset_peak(server.pid)
                    t0 = time.perf_counter()
                    result = await client.push_weights(model, version, bucket)
                    push_s.append(time.perf_counter() - t0)
                    assert result.bytes == total
                    peak = max(peak, _proc_status(server.pid, "VmHWM") - rest)
                    grpc_s.append(await _grpc_send(channel, path, data_offset, bucket))
                    tcp_s.append(
                        await asyncio.to_thread(_tcp_send, tcp_port, path, data_offset, bucket)
                    )
        finally:
            for proc in (server, sink):
                proc.kill()
                await proc.wait()
    return WeightPushFigures(
        bytes=total,
        bucket_bytes=bucket,
        push_s=min(push_s),
        tcp_s=min(tcp_s),
        grpc_s=min(grpc_s),
        receiver_peak_extra_bytes=peak,
    )
