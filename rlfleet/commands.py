"""The async bodies of the CLI's commands (parsing stays in ``cli.py``)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from rlfleet.errors import CommandError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from rlfleet.sandbox.engine import Engine, EngineConfig


def _engine_config(args: argparse.Namespace) -> EngineConfig:
    from rlfleet.sandbox.engine import EngineConfig
    from rlfleet.sandbox.judge import JudgeConfig

    judge = replace(JudgeConfig(), partial_reward=args.partial_reward)
    return EngineConfig(
        backend=args.backend,
        workers=args.workers,
        cgroup_parent=args.cgroup_parent,
        judge=judge,
    )


async def _start_engine(
    args: argparse.Namespace, registry: CollectorRegistry | None = None
) -> Engine:
    from rlfleet.sandbox.cgroups import CgroupError
    from rlfleet.sandbox.engine import Engine

    try:
        return await Engine.start(_engine_config(args), registry)
    except CgroupError as e:
        raise CommandError(f"the local backend cannot start: {e}") from e
    except PermissionError as e:
        raise CommandError(f"the local backend needs root (namespaces, cgroups): {e}") from e


async def verify(args: argparse.Namespace) -> int:
    from rlfleet.sandbox.verify_cmd import CONCURRENCY_PER_WORKER, run_verify

    if not args.cases.is_file():
        raise CommandError(f"{args.cases}: no such file")
    concurrency = args.concurrency or CONCURRENCY_PER_WORKER * args.workers
    if args.server:
        from rlfleet.sandbox.client import VerifierClient

        async with VerifierClient(args.server) as client:
            return await run_verify(client, args.cases, sys.stdout, concurrency)
    engine = await _start_engine(args)
    try:
        return await run_verify(engine, args.cases, sys.stdout, concurrency)
    finally:
        await engine.close()


async def serve_sandbox(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from rlfleet.sandbox.serve import ServeConfig
    from rlfleet.sandbox.serve import serve_sandbox as serve

    try:
        config = ServeConfig(
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            max_pending=args.max_pending,
        )
    except ValueError as e:
        raise CommandError(str(e)) from e
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not path.is_file():
            raise CommandError(f"{path}: no such file")
    registry = CollectorRegistry()
    engine = await _start_engine(args, registry)
    try:
        await serve(config, engine, registry)
    except (OSError, RuntimeError) as e:  # e.g. the port is taken
        raise CommandError(f"cannot serve on {args.host}:{args.port}: {e}") from e
    finally:
        await engine.close()
    return 0


async def bench_sandbox(args: argparse.Namespace) -> int:
    from rlfleet.bench.sandbox_bench import run_sandbox_bench

    return await run_sandbox_bench(args)
