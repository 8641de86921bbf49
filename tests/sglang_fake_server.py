"""A stand-in for ``python -m sglang.launch_server``: takes the flags the sglang engine
passes (refusing others, as SGLang's parser does), serves the fake of the surface they
select (tests/sglang_fakes.py) and runs until SIGTERM, so the adapter's process handling
(start, health wait, close of the whole process group) is tested for real.

Fake-only flags: ``--fake-startup-s S`` (answer unhealthy for S seconds), ``--fake-never-healthy``,
``--fake-ignore-sigterm`` (only SIGKILL ends it), ``--fake-pid-file F`` (writes its pid and
the pid of a child it forks, as SGLang forks its scheduler), ``--fake-exit N`` (exit at once),
``--fake-receive-dir D`` (the NCCL routes join and receive for real, on gloo, and save what
came there), ``--fake-die-after-tensors N`` (exit after receiving N broadcast tensors),
``--fake-stall-receive`` (an update by broadcast never receives: a server that hangs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sglang_fakes import FakeHttpSglang, FakeScheduler, serve_scheduler


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sglang.launch_server")
    p.add_argument("--model-path", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--weight-version", default="default")
    p.add_argument("--smg-grpc-mode", action="store_true")
    p.add_argument("--grpc-port", type=int)
    p.add_argument("--enable-deterministic-inference", action="store_true")
    p.add_argument("--fake-startup-s", type=float, default=0.0)
    p.add_argument("--fake-never-healthy", action="store_true")
    p.add_argument("--fake-ignore-sigterm", action="store_true")
    p.add_argument("--fake-pid-file")
    p.add_argument("--fake-exit", type=int)
    p.add_argument("--fake-receive-dir", type=Path)
    p.add_argument("--fake-die-after-tensors", type=int)
    p.add_argument("--fake-stall-receive", action="store_true")
    return p.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    print("argv:", " ".join(sys.argv[1:]), flush=True)
    if args.fake_exit is not None:
        print("fake: exiting as asked", flush=True)
        sys.exit(args.fake_exit)
    if args.fake_pid_file:
        # A child in the same process group, as SGLang's scheduler and detokenizer are.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        Path(args.fake_pid_file).write_text(f"{os.getpid()} {child.pid}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if args.fake_ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    ready_at = time.monotonic() + args.fake_startup_s
    if args.smg_grpc_mode:
        # As SGLang's serving hook: legacy mode's gRPC port defaults to --port + 10000.
        grpc_port = args.grpc_port if args.grpc_port is not None else args.port + 10000
        scheduler = FakeScheduler(version=args.weight_version)
        scheduler.healthy = False
        server, _ = await serve_scheduler(scheduler, args.host, grpc_port)
        while not stop.is_set():
            scheduler.healthy = not args.fake_never_healthy and time.monotonic() >= ready_at
            await asyncio.sleep(0.05)
        await server.stop(0.5)
    else:
        http = FakeHttpSglang(
            host=args.host,
            port=args.port,
            version=args.weight_version,
            receive_dir=args.fake_receive_dir,
            die_after_tensors=args.fake_die_after_tensors,
            stall_receive=args.fake_stall_receive,
        )
        http.healthy = False
        http.start()
        while not stop.is_set():
            http.healthy = not args.fake_never_healthy and time.monotonic() >= ready_at
            await asyncio.sleep(0.05)
        http.stop()


if __name__ == "__main__":
    asyncio.run(main(parse(sys.argv[1:])))
