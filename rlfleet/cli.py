"""The ``rlfleet`` command line.

argparse stays in this module: it builds each component's config dataclasses and makes a
typed call into the component's ``commands`` module. Nothing heavy is imported until a
command runs (``rlfleet --help`` stays fast, the verifier never imports torch).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlfleet.errors import CommandError

if TYPE_CHECKING:
    from rlfleet.sandbox.engine import EngineConfig


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=("local", "docker"),
        default="local",
        help="where programs run (default: local namespaces; docker: containers)",
    )
    p.add_argument(
        "--workers", type=_positive_int, default=2, help="programs run at once (default: 2)"
    )
    p.add_argument(
        "--cgroup-parent",
        default="",
        metavar="PATH",
        help="local backend, cgroup v2: the cgroup to work under (default: its own when "
        "delegated, as by systemd's Delegate=yes; else the root it sees)",
    )
    p.add_argument(
        "--partial-reward",
        action="store_true",
        help="reward non-AC code cases with the fraction of tests passed",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlfleet", description="Rollout and sandboxed verification for RL on LLMs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    verify = sub.add_parser("verify", help="verify cases from a JSONL file")
    verify.add_argument("cases", type=Path, help="JSONL file, one case per line")
    _add_engine_flags(verify)
    verify.add_argument("--server", help="send the cases to a running `rlfleet serve sandbox`")
    verify.add_argument(
        "--concurrency",
        type=_positive_int,
        default=None,
        help="cases running at once (default: 4 x workers); output keeps input order",
    )

    serve = sub.add_parser("serve", help="run a service")
    serve_sub = serve.add_subparsers(dest="service", required=True)
    sandbox = serve_sub.add_parser("sandbox", help="the verifier service (gRPC)")
    _add_engine_flags(sandbox)
    sandbox.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    sandbox.add_argument("--port", type=int, default=50051, help="gRPC port (0: any free port)")
    sandbox.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port"
    )
    sandbox.add_argument("--tls-cert", type=Path, help="PEM certificate (enables TLS)")
    sandbox.add_argument("--tls-key", type=Path, help="PEM private key")
    sandbox.add_argument(
        "--max-pending",
        type=int,
        default=None,
        help="cases queued or running before RESOURCE_EXHAUSTED",
    )

    sb = sub.add_parser("sandbox", help="sandbox maintenance")
    sb_sub = sb.add_subparsers(dest="action", required=True)
    prepare = sb_sub.add_parser("prepare", help="check (and build) what a backend needs")
    prepare.add_argument("--backend", choices=("local", "docker"), default="local")

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="target", required=True)
    bsand = bench_sub.add_parser("sandbox", help="sandbox and math-checker throughput")
    bsand.add_argument(
        "--backends", default="local,docker", help="comma-separated (default: local,docker)"
    )
    bsand.add_argument("--workers", type=_positive_int, default=2)
    bsand.add_argument(
        "--tests", type=_positive_int, default=400, help="trivial tests per measurement"
    )
    bsand.add_argument("--math", type=int, default=None, help="math corpus size (default: all)")
    return parser


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine; SIGTERM cancels it like Ctrl-C, so cleanup always runs."""

    async def main() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await coro
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("rlfleet: interrupted", file=sys.stderr)
        return 130


def _engine_config(args: argparse.Namespace) -> EngineConfig:
    from rlfleet.sandbox.engine import EngineConfig
    from rlfleet.sandbox.judge import JudgeConfig
    from rlfleet.sandbox.worker_pool import PoolConfig

    return EngineConfig(
        backend=args.backend,
        pool=PoolConfig(workers=args.workers),
        cgroup_parent=args.cgroup_parent,
        judge=JudgeConfig(partial_reward=args.partial_reward),
    )


def _verify(args: argparse.Namespace) -> int:
    from rlfleet.sandbox import commands

    config = commands.VerifyConfig(
        cases=args.cases,
        server=args.server,
        engine=_engine_config(args),
        concurrency=args.concurrency,
    )
    return _run(commands.verify(config))


def _serve_sandbox(args: argparse.Namespace) -> int:
    from rlfleet.grpc_server import ServerConfig
    from rlfleet.sandbox import commands
    from rlfleet.sandbox.servicer import ServiceConfig

    try:
        server = ServerConfig(
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
    except ValueError as e:
        raise CommandError(str(e)) from e
    config = commands.ServeConfig(
        server=server,
        service=ServiceConfig(max_pending=args.max_pending),
        engine=_engine_config(args),
    )
    return _run(commands.serve(config))


def _bench_sandbox(args: argparse.Namespace) -> int:
    from rlfleet.bench.sandbox_bench import run_sandbox_bench
    from rlfleet.sandbox.engine import BACKENDS

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise CommandError(
            f"--backends: unknown {', '.join(unknown) or 'none given'} (one of local, docker)"
        )
    return _run(run_sandbox_bench(backends, args.workers, args.tests, args.math))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "verify":
            return _verify(args)
        if args.command == "serve":
            return _serve_sandbox(args)
        if args.command == "sandbox":
            from rlfleet.sandbox.prepare import prepare

            return prepare(args.backend)
        if args.command == "bench":
            return _bench_sandbox(args)
    except CommandError as e:
        print(f"rlfleet: {e}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
