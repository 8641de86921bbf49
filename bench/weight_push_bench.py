"""The weight-push half of ``rlfleet bench rollout``, measured in the same run as its
baseline.

Weight push (``bench_weight_push``): a model directory's safetensors pushed through
UpdateWeights to a rollout server in another process (whose engine applies nothing, so the
figure is the transport: read, hash, send, receive, spool to disk, hash, check), the bytes
over the data plane (a one-shot TCP connection beside the call, ``rollout/data_plane.py``)
and, separately, in the call's gRPC messages; against the same bytes over a raw loopback
TCP socket between the same two kinds of process (read from the same file, received into a
fixed buffer and dropped), and against the ceiling gRPC itself sets for messages: the same
buckets as raw bytes over a bare client-streaming method of the same server (no protobuf,
no hashing, no disk). Each is run ``repeats`` times, interleaved; the best and the worst
are reported (the machine may be shared). Also measured: the receiving server's peak
resident memory above its resting size during a push of each kind (after one unmeasured
warm-up push of each, which also pays the server's one-time allocations), to compare with
the bucket size and the model size; and the CPU seconds each transfer takes, sender and
receiver together (this process's ``getrusage``, the receiver's ``/proc/PID/stat``): on a
shared machine the speeds vary with the load, the CPU seconds much less, and they say what
a transfer costs.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

import rlfleet
from rlfleet.rollout.client import ClientConfig, RolloutClient, channel_options
from rlfleet.rollout.records import DType, TensorSpec
from rlfleet.rollout.servicer import ServiceConfig
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
T = TypeVar("T")

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
    receive_buffer_bytes: int
    """The server's data-plane receive buffer (``ServiceConfig.data_buffer_bytes``)."""
    push_s: tuple[float, ...]
    """UpdateWeights pushes over the data plane, client call to applied, one per run."""
    messages_s: tuple[float, ...]
    """UpdateWeights pushes with the bytes in gRPC messages."""
    tcp_s: tuple[float, ...]
    """Raw loopback TCP transfers of the same bytes."""
    grpc_s: tuple[float, ...]
    """Transfers of the same buckets over a bare gRPC client stream (the messages' ceiling)."""
    receiver_peak_extra_bytes: int
    """The server's peak resident memory during a data-plane push, above its size before."""
    messages_peak_extra_bytes: int
    """The same, during a push in messages."""
    push_cpu_s: tuple[float, ...]
    """CPU seconds of each data-plane push, sender and receiver together."""
    messages_cpu_s: tuple[float, ...]
    tcp_cpu_s: tuple[float, ...]
    grpc_cpu_s: tuple[float, ...]

    @property
    def ratio(self) -> float:
        """The data plane against raw TCP, best against best."""
        return min(self.tcp_s) / min(self.push_s)

    @property
    def messages_ratio(self) -> float:
        """Pushes in messages against raw TCP, best against best."""
        return min(self.tcp_s) / min(self.messages_s)

    def lines(self) -> list[str]:
        mb = self.bytes / 1e6
        tcp = min(self.tcp_s)

        def row(name: str, runs: tuple[float, ...], cpu: tuple[float, ...], note: str) -> str:
            best, worst = mb / min(runs), mb / max(runs)
            return (
                f"  {name:<26}{best:>6.0f} MB/s (worst {worst:>5.0f}), "
                f"{statistics.median(cpu):.2f} CPU s{note}"
            )

        return [
            f"weight push: {mb:.0f} MB in {self.bucket_bytes / 2**20:g} MiB buckets, "
            f"{len(self.tcp_s)} runs each, interleaved; best (and worst) of them, and the "
            "median CPU seconds (sender + receiver):",
            row("raw loopback TCP", self.tcp_s, self.tcp_cpu_s, ""),
            row(
                "UpdateWeights, data plane",
                self.push_s,
                self.push_cpu_s,
                f"  {self.ratio:.2f}x of raw TCP",
            ),
            row(
                "UpdateWeights, messages",
                self.messages_s,
                self.messages_cpu_s,
                f"  {self.messages_ratio:.2f}x of raw TCP",
            ),
            row(
                "bare gRPC stream",
                self.grpc_s,
                self.grpc_cpu_s,
                f"  {tcp / min(self.grpc_s):.2f}x of raw TCP",
            ),
            f"receiver peak memory above rest: data plane "
            f"{self.receiver_peak_extra_bytes / 2**20:.1f} MiB (receive buffer "
            f"{self.receive_buffer_bytes / 2**20:g} MiB), messages "
            f"{self.messages_peak_extra_bytes / 2**20:.1f} MiB "
            f"(bucket {self.bucket_bytes / 2**20:g} MiB, model {self.bytes / 2**20:.0f} MiB)",
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


def _cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux), or by this one
    with all its threads."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    # (Fields 14 and 15, counted after the command name, which may hold spaces.)
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _cpu_of(pid: int, transfer: Awaitable[T]) -> tuple[T, float]:
    """``transfer``'s outcome, and the CPU seconds this process and ``pid`` took meanwhile."""
    before = _cpu_s() + _cpu_s(pid)
    outcome = await transfer
    return outcome, _cpu_s() + _cpu_s(pid) - before


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


async def _push(
    client: RolloutClient, pid: int, model: Path, version: int, bucket: int, total: int
) -> tuple[float, int]:
    """One push: its seconds, and the server's peak memory above its size before it."""
    rest = _proc_status(pid, "VmRSS")
    _reset_peak(pid)
    t0 = time.perf_counter()
    result = await client.push_weights(model, version, bucket)
    seconds = time.perf_counter() - t0
    assert result.bytes == total
    return seconds, _proc_status(pid, "VmHWM") - rest


async def bench_weight_push(
    size_mb: int = 256, bucket_mb: int = 8, repeats: int = 3, work_dir: Path | None = None
) -> WeightPushFigures:
    """Push ``size_mb`` MB through UpdateWeights (data plane, then messages), bare gRPC and
    raw TCP, ``repeats`` times each, interleaved."""
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
        push_s: list[float] = []
        messages_s: list[float] = []
        tcp_s: list[float] = []
        grpc_s: list[float] = []
        cpu: dict[str, list[float]] = {"push": [], "messages": [], "tcp": [], "grpc": []}
        peak, messages_peak = 0, 0
        path = model / "model.safetensors"
        config = ClientConfig(weight_transport="data-plane")
        try:
            async with (
                RolloutClient(f"127.0.0.1:{grpc_port}", config) as client,
                RolloutClient(
                    f"127.0.0.1:{grpc_port}", ClientConfig(weight_transport="grpc")
                ) as messages,
                grpc.aio.insecure_channel(
                    f"127.0.0.1:{grpc_port}", channel_options(config)
                ) as channel,
            ):
                await client.push_weights(model, 1, bucket)  # warm-up
                await messages.push_weights(model, 2, bucket)
                version = 3
                for _ in range(repeats):
                    (seconds, extra), used = await _cpu_of(
                        server.pid, _push(client, server.pid, model, version, bucket, total)
                    )
                    push_s.append(seconds)
                    cpu["push"].append(used)
                    peak = max(peak, extra)
                    (seconds, extra), used = await _cpu_of(
                        server.pid,
                        _push(messages, server.pid, model, version + 1, bucket, total),
                    )
                    messages_s.append(seconds)
                    cpu["messages"].append(used)
                    messages_peak = max(messages_peak, extra)
                    version += 2
                    seconds, used = await _cpu_of(
                        server.pid, _grpc_send(channel, path, data_offset, bucket)
                    )
                    grpc_s.append(seconds)
                    cpu["grpc"].append(used)
                    seconds, used = await _cpu_of(
                        sink.pid,
                        asyncio.to_thread(_tcp_send, tcp_port, path, data_offset, bucket),
                    )
                    tcp_s.append(seconds)
                    cpu["tcp"].append(used)
        finally:
            for proc in (server, sink):
                proc.kill()
                await proc.wait()
    return WeightPushFigures(
        bytes=total,
        bucket_bytes=bucket,
        receive_buffer_bytes=ServiceConfig().data_buffer_bytes,
        push_s=tuple(push_s),
        messages_s=tuple(messages_s),
        tcp_s=tuple(tcp_s),
        grpc_s=tuple(grpc_s),
        receiver_peak_extra_bytes=peak,
        messages_peak_extra_bytes=messages_peak,
        push_cpu_s=tuple(cpu["push"]),
        messages_cpu_s=tuple(cpu["messages"]),
        tcp_cpu_s=tuple(cpu["tcp"]),
        grpc_cpu_s=tuple(cpu["grpc"]),
    )
