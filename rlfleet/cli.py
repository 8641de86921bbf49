"""The ``rlfleet`` command line.

argparse stays in this module: it builds each component's config dataclasses and makes a
typed call into the component's ``commands`` module. Nothing heavy is imported until a
command runs (``rlfleet --help`` stays fast, the verifier never imports torch).

Every command fails the same way (docs/cli.md): one line on stderr, prefixed with the
command (``rlfleet verify: ...``), no traceback unless ``-v``, and an exit code from
``rlfleet.errors``: 0 done, 1 could not do its work, 2 bad usage or invalid input.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import select
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from rlfleet.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CommandError,
    UsageError,
)

if TYPE_CHECKING:
    from rlfleet.grpc_server import ServerConfig
    from rlfleet.sandbox.engine import EngineConfig

Run = Callable[[argparse.Namespace], int]
"""A command: parsed flags in, exit code out (expected failures raise ``CommandError``)."""

VERBOSE = "log more, and show the traceback of an error"


class Parser(argparse.ArgumentParser):
    """argparse, failing as every rlfleet command fails: one line with the command's prefix
    and exit 2 (argparse's own ``error`` prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _int(text: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"{low} to {high}"
        raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int(text, 1)


def _count(text: str) -> int:
    return _int(text, 0)


def _port(text: str) -> int:
    return _int(text, 0, 65535)


def _float(text: str, low: float, high: float | None = None, low_open: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    too_low = value <= low if low_open else value < low
    if math.isnan(value) or too_low or (high is not None and value > high):  # (NaN too)
        bounds = (
            f"in ({low:g}, {high:g}]"
            if high is not None
            else f"{'>' if low_open else '>='} {low:g}"
        )
        raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
    return value


def _command(
    sub: argparse._SubParsersAction[Parser], name: str, run: Run, help: str
) -> argparse.ArgumentParser:
    """A command's parser: ``-v`` after its name too; ``main`` calls ``run`` and prefixes
    errors with its full name (``rlfleet serve sandbox``)."""
    p = sub.add_parser(name, help=help)
    # No default here: it would overwrite a -v given before the command's name.
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE)
    p.set_defaults(run=run, prog=p.prog, parser=p)
    return p


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
        "--runtime",
        choices=("runc", "runsc"),
        default=None,
        help="docker backend: the containers' OCI runtime (default: the engine's; runsc: "
        "gVisor, a second wall, slower per test: docs/sandbox.md)",
    )
    p.add_argument(
        "--cgroup-parent",
        default="",
        metavar="PATH",
        help="local backend: the cgroup to work under (on v1 the same path in each "
        "controller's hierarchy; default: on v2 its own when delegated, as by systemd's "
        "Delegate=yes; else as root the root it sees, and not as root no cgroups at all)",
    )
    p.add_argument(
        "--partial-reward",
        action="store_true",
        help="reward non-AC code cases with the fraction of tests passed",
    )
    p.add_argument(
        "--math-extraction",
        choices=("strict", "prose"),
        default="strict",
        help="how math answers are found when a case does not say (default: strict, answer "
        "tags, boxes, answer lines; prose: failing those, the last expression; docs/math.md)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="rlfleet", description="Rollout and sandboxed verification for RL on LLMs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    verify = _command(sub, "verify", _verify, "verify cases from a JSONL file")
    verify.add_argument("cases", type=Path, help="JSONL file, one case per line (-: stdin)")
    _add_engine_flags(verify)
    verify.add_argument("--server", help="send the cases to a running `rlfleet serve sandbox`")
    verify.add_argument(
        "--concurrency",
        type=_positive_int,
        default=None,
        help="cases running at once (default: 4 x workers); output keeps input order",
    )

    serve = sub.add_parser("serve", help="run a service")
    serve_sub = serve.add_subparsers(dest="service", required=True, metavar="SERVICE")
    sandbox = _command(serve_sub, "sandbox", _serve_sandbox, "the verifier service (gRPC)")
    _add_engine_flags(sandbox)
    sandbox.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    sandbox.add_argument("--port", type=_port, default=50051, help="gRPC port (0: any free port)")
    sandbox.add_argument(
        "--metrics-port", type=_port, default=None, help="serve Prometheus metrics on this port"
    )
    sandbox.add_argument("--tls-cert", type=Path, help="PEM certificate (enables TLS)")
    sandbox.add_argument("--tls-key", type=Path, help="PEM private key")
    sandbox.add_argument(
        "--http-port",
        type=_port,
        default=None,
        help="also answer SandboxFusion's POST /run_code over HTTP on this port (docs/run_code.md)",
    )
    sandbox.add_argument(
        "--run-code-memory-mb",
        type=_positive_int,
        default=1024,
        help="memory of a /run_code run whose request sets no memory_limit_MB (default: 1024)",
    )
    sandbox.add_argument(
        "--run-code-queue-wait-s",
        type=float,
        default=600.0,
        help="how long a /run_code request waits for a slot while the queue is full, "
        "before a 504 (default: 600)",
    )
    sandbox.add_argument(
        "--max-pending",
        type=_positive_int,
        default=None,
        help="cases queued or running before RESOURCE_EXHAUSTED",
    )

    _add_rollout_commands(sub, serve_sub)

    sb = sub.add_parser("sandbox", help="sandbox maintenance")
    sb_sub = sb.add_subparsers(dest="action", required=True, metavar="ACTION")
    prepare = _command(sb_sub, "prepare", _prepare, "check (and build) what a backend needs")
    prepare.add_argument("--backend", choices=("local", "docker"), default="local")
    prepare.add_argument(
        "--cgroup-parent",
        default="",
        metavar="PATH",
        help="local backend: the cgroup it would work under (as for serve and verify)",
    )

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="target", required=True, metavar="TARGET")
    bsand = _command(bench_sub, "sandbox", _bench_sandbox, "sandbox and math-checker throughput")
    bsand.add_argument(
        "--backends", default="local,docker", help="comma-separated (default: local,docker)"
    )
    bsand.add_argument(
        "--runtimes",
        default="runc",
        help="docker backend: comma-separated OCI runtimes, each measured in the same run "
        "(default: runc; runc,runsc: gVisor against runc)",
    )
    bsand.add_argument("--workers", type=_positive_int, default=2)
    bsand.add_argument(
        "--tests", type=_positive_int, default=400, help="trivial tests per measurement"
    )
    bsand.add_argument(
        "--rounds",
        type=_positive_int,
        default=4,
        help="pool, service and verify measured this many times each, in turn, every other "
        "round in reverse order (default: 4)",
    )
    bsand.add_argument(
        "--language-tests",
        type=_count,
        default=40,
        help="runs per language for its start-up cost against a bare run (default: 40; 0: skip)",
    )
    bsand.add_argument(
        "--math", type=_count, default=None, help="math corpus size (default: all; 0: skip)"
    )
    bmath = _command(
        bench_sub,
        "math",
        _bench_math,
        "math checker against math-verify on the labelled outside corpus",
    )
    bmath.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="labelled pairs, JSON lines (default: tests/data/math_outside.jsonl of a source "
        "checkout)",
    )
    bmath.add_argument(
        "--pairs",
        type=_positive_int,
        default=None,
        help="an even spread of this many (default: all)",
    )
    brol = _command(
        bench_sub,
        "rollout",
        _bench_rollout,
        "torch engine tokens/s against HF generate; weight push against raw TCP",
    )
    brol.add_argument(
        "--model",
        type=Path,
        default=None,
        help="HF model directory (default: a tiny one made here)",
    )
    brol.add_argument(
        "--batches", default="16,64", help="comma-separated batch sizes (default: 16,64)"
    )
    brol.add_argument("--new-tokens", type=_positive_int, default=64, help="per sequence")
    brol.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    brol.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    brol.add_argument(
        "--repeats", type=_positive_int, default=3, help="runs per measurement; best kept"
    )
    brol.add_argument(
        "--push-mb", type=_count, default=256, help="weights pushed, in MB (0: skip the push)"
    )
    brol.add_argument("--bucket-mb", type=_positive_int, default=8, help="push bucket size")
    brol.add_argument(
        "--only",
        choices=("engine", "push"),
        default=None,
        help="run one half: engine tokens/s, or the weight push (default: both)",
    )
    brol.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="intra-op CPU threads, HF and the engine alike (default: 1)",
    )
    brol.add_argument(
        "--compile",
        choices=("off", "on", "both"),
        default="both",
        help="measure the engine eager (off), with its compiled decode step (on), or both "
        "(default: both)",
    )
    btrain = _command(
        bench_sub,
        "train",
        _bench_train,
        "learner step time, generation one step ahead against synchronous",
    )
    btrain.add_argument("--steps", type=_positive_int, default=20, help="measured, per mode")
    btrain.add_argument("--warmup", type=_count, default=3, help="steps left out, per mode")
    btrain.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="train config overrides")

    _add_train_command(sub)
    _add_sample_command(sub)

    model = sub.add_parser("model", help="model tooling")
    model_sub = model.add_subparsers(dest="action", required=True, metavar="ACTION")
    minit = _command(
        model_sub, "init", _model_init, "write a small random HF-format model directory"
    )
    minit.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="directory to write")
    minit.add_argument(
        "--preset", choices=("tiny",), default="tiny", help="model size (default: tiny)"
    )
    minit.add_argument("--seed", type=_count, default=0, help="weight init seed (default: 0)")
    minit.add_argument(
        "--force", action="store_true", help="write into OUT_DIR even when it is not empty"
    )
    return parser


def _add_rollout_commands(
    sub: argparse._SubParsersAction[Parser], serve_sub: argparse._SubParsersAction[Parser]
) -> None:
    """``serve rollout``, ``generate``, ``push-weights``."""
    rollout = _command(serve_sub, "rollout", _serve_rollout, "the rollout service (gRPC)")
    rollout.add_argument(
        "--engine", choices=("torch", "sglang"), default="torch", help="(default: torch)"
    )
    rollout.add_argument("--model", type=Path, required=True, help="HF model directory")
    rollout.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    rollout.add_argument("--port", type=_port, default=50052, help="gRPC port (0: any free port)")
    rollout.add_argument(
        "--metrics-port", type=_port, default=None, help="serve Prometheus metrics on this port"
    )
    rollout.add_argument(
        "--verifier",
        metavar="HOST:PORT[,...]",
        help="verifier fleet that scores completions (host:port, dns:///name:port, or a "
        "comma list of ip:port); without it completions are returned unscored",
    )
    rollout.add_argument("--tls-cert", type=Path, help="PEM certificate (enables TLS)")
    rollout.add_argument("--tls-key", type=Path, help="PEM private key")
    rollout.add_argument("--device", default="cpu", help="torch engine: cpu or cuda[:N]")
    rollout.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="(default: float32)"
    )
    rollout.add_argument(
        "--sglang-surface",
        choices=("grpc", "http"),
        default="grpc",
        help="sglang engine: generate over SGLang's gRPC scheduler API, or its HTTP server, "
        "the one that takes weight updates (default: grpc)",
    )
    rollout.add_argument(
        "--compile",
        action="store_true",
        help="torch engine: compile its decode step with torch.compile at start (a longer "
        "start, faster steps)",
    )
    rollout.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="torch engine: CPU threads of its decode loop (default: torch's, one per core; "
        "1 where the cores are shared with other work, as in `rlfleet train`'s own fleet)",
    )

    gen = _command(sub, "generate", _generate, "sample scored completions from a rollout server")
    gen.add_argument("--server", required=True, help="a running `rlfleet serve rollout`")
    gen.add_argument(
        "--prompts", type=Path, required=True, help="JSONL file, one prompt per line (-: stdin)"
    )
    gen.add_argument("--n", type=_positive_int, default=1, help="samples per prompt (default: 1)")
    gen.add_argument(
        "--temperature",
        type=lambda t: _float(t, 0.0),
        default=1.0,
        help="0: greedy (default: 1)",
    )
    gen.add_argument("--max-new-tokens", type=_positive_int, default=256, help="(default: 256)")
    gen.add_argument(
        "--top-p",
        type=lambda t: _float(t, 0.0, 1.0, low_open=True),
        default=1.0,
        help="(default: 1)",
    )
    gen.add_argument(
        "--seed", type=_count, default=None, help="sample i of each prompt uses seed + i"
    )

    push = _command(
        sub, "push-weights", _push_weights, "push a model's weights to a rollout server"
    )
    push.add_argument("--server", required=True, help="a running `rlfleet serve rollout`")
    push.add_argument("--model", type=Path, required=True, help="HF model directory")
    push.add_argument(
        "--version", type=_positive_int, required=True, help="policy version (newer than served)"
    )
    push.add_argument(
        "--bucket-mb",
        type=lambda t: _int(t, 1, 63),
        default=8,
        help="MiB per message (default: 8)",
    )
    push.add_argument(
        "--transport",
        choices=("auto", "data-plane", "grpc"),
        default="auto",
        help="the bytes over the server's data connection when it offers one (auto), only "
        "there, or only in gRPC messages (default: auto)",
    )


def _add_train_command(sub: argparse._SubParsersAction[Parser]) -> None:
    train = _command(
        sub,
        "train",
        _train,
        "RL on the fleet; with no arguments: a tiny model on a built-in task, servers embedded",
    )
    train.add_argument("--config", type=Path, help="TOML file of TrainConfig's tables")
    train.add_argument(
        "--run-dir", type=Path, help="where the run is written (default: ./runs/TIME)"
    )
    train.add_argument(
        "--resume", type=Path, metavar="DIR", help="continue the run in DIR from its checkpoint"
    )
    train.add_argument("--seed", type=_count, default=None, help="(default: 0)")
    train.add_argument("--steps", type=_positive_int, default=None, help="optimizer steps")
    train.add_argument(
        "--rollout", metavar="HOST:PORT[,...]", help="rollout servers (default: start one)"
    )
    train.add_argument(
        "--verifier", metavar="HOST:PORT[,...]", help="verifier servers (default: start one)"
    )
    train.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=3e-4"
    )


def _train(args: argparse.Namespace) -> int:
    from rlfleet.learner import commands
    from rlfleet.learner.config import ConfigError, load_config

    if args.resume is not None:
        if args.config or args.run_dir or args.seed is not None or args.overrides:
            raise UsageError("--resume takes the run's own config: only --steps may go with it")
        config = commands.resume_config(args.resume, args.steps)
        return _run(
            commands.train(commands.TrainCommand(config=config, run_dir=args.resume, resume=True))
        )
    try:
        config = load_config(
            args.config,
            args.overrides,
            seed=args.seed,
            steps=args.steps,
            fleet__rollout=args.rollout,
            fleet__verifier=args.verifier,
        )
    except ConfigError as e:
        raise UsageError(str(e)) from e
    run_dir = args.run_dir or commands.default_run_dir()
    return _run(commands.train(commands.TrainCommand(config=config, run_dir=run_dir)))


def _add_sample_command(sub: argparse._SubParsersAction[Parser]) -> None:
    sample = _command(
        sub,
        "sample",
        _sample,
        "rejection sampling: keep only verified-correct completions, as SFT data",
    )
    sample.add_argument(
        "--model", type=Path, help="HF model directory (served by an embedded rollout server)"
    )
    sample.add_argument(
        "--data",
        type=Path,
        help="JSONL or parquet tasks, as `rlfleet train` reads them (default: the built-in task)",
    )
    sample.add_argument("--format", help="the data file's format (default: recognised per record)")
    sample.add_argument(
        "--template",
        help="prompt template: r1 or plain (default: plain for the built-in task, r1 for --data)",
    )
    sample.add_argument(
        "--out", type=Path, required=True, help="JSONL file of the kept completions (-: stdout)"
    )
    sample.add_argument("--force", action="store_true", help="overwrite --out if it holds data")
    sample.add_argument(
        "--n", type=_positive_int, default=16, help="samples per prompt (default: 16)"
    )
    sample.add_argument(
        "--max-per-prompt",
        type=_positive_int,
        default=4,
        help="unique correct completions kept per prompt (default: 4)",
    )
    sample.add_argument(
        "--any-format",
        action="store_true",
        help="keep correct answers even when not in the template's format",
    )
    sample.add_argument(
        "--temperature", type=lambda t: _float(t, 0.0), default=1.0, help="(default: 1)"
    )
    sample.add_argument(
        "--top-p",
        type=lambda t: _float(t, 0.0, 1.0, low_open=True),
        default=1.0,
        help="(default: 1)",
    )
    sample.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=None,
        help="(default: 1 for the built-in task, 1024 for --data)",
    )
    sample.add_argument("--seed", type=_count, default=0, help="sampling seeds (default: 0)")
    sample.add_argument("--limit", type=_positive_int, default=None, help="first N prompts only")
    sample.add_argument(
        "--concurrency", type=_positive_int, default=8, help="prompts in flight (default: 8)"
    )
    sample.add_argument(
        "--rollout", metavar="HOST:PORT[,...]", help="rollout servers (default: start one)"
    )
    sample.add_argument(
        "--verifier", metavar="HOST:PORT[,...]", help="verifier servers (default: start one)"
    )


def _sample(args: argparse.Namespace) -> int:
    from rlfleet.learner import sample

    try:
        command = sample.SampleCommand(
            out=args.out,
            model=args.model,
            data=args.data,
            data_format=args.format,
            rollout=args.rollout,
            verifier=args.verifier,
            force=args.force,
            sample=sample.SampleConfig(
                n=args.n,
                max_per_prompt=args.max_per_prompt,
                temperature=args.temperature,
                top_p=args.top_p,
                max_new_tokens=args.max_new_tokens,
                seed=args.seed,
                template=args.template,
                require_format=not args.any_format,
                limit=args.limit,
                concurrency=args.concurrency,
            ),
        )
    except ValueError as e:
        raise UsageError(str(e)) from e
    return _run(sample.sample(command))


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine; SIGTERM cancels it like Ctrl-C, so cleanup always runs
    (``main`` reports either as an interruption)."""

    async def main() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await coro
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    return asyncio.run(main())


def _engine_config(args: argparse.Namespace) -> EngineConfig:
    from rlfleet.sandbox.docker_backend import DockerConfig
    from rlfleet.sandbox.engine import EngineConfig
    from rlfleet.sandbox.judge import JudgeConfig
    from rlfleet.sandbox.mathcheck import MathCheckConfig
    from rlfleet.sandbox.worker_pool import PoolConfig

    if args.runtime and args.backend != "docker":
        raise UsageError(f"--runtime: only the docker backend has one (--backend {args.backend})")
    return EngineConfig(
        backend=args.backend,
        pool=PoolConfig(workers=args.workers),
        docker=DockerConfig(runtime=args.runtime or ""),
        cgroup_parent=args.cgroup_parent,
        judge=JudgeConfig(partial_reward=args.partial_reward),
        math=MathCheckConfig(processes=1, extraction=args.math_extraction),
    )


def _verify(args: argparse.Namespace) -> int:
    from rlfleet.sandbox import commands

    try:
        config = commands.VerifyConfig(
            cases=args.cases,
            server=args.server,
            engine=_engine_config(args),
            concurrency=args.concurrency,
        )
    except ValueError as e:
        raise UsageError(str(e)) from e
    return _run(commands.verify(config))


def _server_config(args: argparse.Namespace) -> ServerConfig:
    """The gRPC server flags every `serve` command shares."""
    from rlfleet.grpc_server import ServerConfig

    return ServerConfig(
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def _serve_sandbox(args: argparse.Namespace) -> int:
    from rlfleet.sandbox import commands
    from rlfleet.sandbox.fusion import HttpConfig, RunCodeConfig
    from rlfleet.sandbox.servicer import ServiceConfig

    try:
        http = None
        if args.http_port is not None:
            http = HttpConfig(
                port=args.http_port,
                run_code=RunCodeConfig(
                    memory_mb=args.run_code_memory_mb, queue_wait_s=args.run_code_queue_wait_s
                ),
            )
        config = commands.ServeConfig(
            server=_server_config(args),
            service=ServiceConfig(max_pending=args.max_pending),
            engine=_engine_config(args),
            http=http,
        )
    except ValueError as e:
        raise UsageError(str(e)) from e
    return _run(commands.serve(config))


def _prepare(args: argparse.Namespace) -> int:
    from rlfleet.sandbox.prepare import prepare

    return prepare(args.backend, args.cgroup_parent)


def _bench_sandbox(args: argparse.Namespace) -> int:
    from rlfleet.bench.sandbox_bench import run_sandbox_bench
    from rlfleet.sandbox.engine import BACKENDS

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise UsageError(
            f"--backends: unknown {', '.join(unknown) or 'none given'} (one of local, docker)"
        )
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    odd = [r for r in runtimes if r not in ("runc", "runsc")]
    if odd or not runtimes:
        raise UsageError(
            f"--runtimes: unknown {', '.join(odd) or 'none given'} (one of runc, runsc)"
        )
    return _run(
        run_sandbox_bench(
            backends,
            args.workers,
            args.tests,
            args.math,
            runtimes,
            args.language_tests,
            args.rounds,
        )
    )


def _bench_math(args: argparse.Namespace) -> int:
    from rlfleet.bench.math_bench import OUTSIDE_CORPUS, print_outside_bench, run_outside_bench

    corpus = args.corpus or OUTSIDE_CORPUS
    if not corpus.is_file():
        where = "" if args.corpus else " (it comes with a source checkout; give --corpus)"
        raise UsageError(f"{corpus}: no such file{where}")
    print(f"rlfleet bench math: {corpus} (vs math-verify where installed) ...", file=sys.stderr)
    try:
        # In this (main) thread: math-verify's own timeout relies on signal.alarm.
        report = run_outside_bench(corpus, args.pairs)
    except ValueError as e:
        raise UsageError(str(e)) from e
    print_outside_bench(report)
    return 0


def _bench_rollout(args: argparse.Namespace) -> int:
    from rlfleet.bench.rollout_bench import BENCH_ENGINE_MODES, run_rollout_bench

    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise UsageError(f"--batches: expected whole numbers >= 1, got {args.batches!r}")
    return _run(
        run_rollout_bench(
            args.model,
            batches=batches,
            new_tokens=args.new_tokens,
            device=args.device,
            dtype=args.dtype,
            repeats=args.repeats,
            push_mb=0 if args.only == "engine" else args.push_mb,
            bucket_mb=args.bucket_mb,
            threads=args.threads,
            engine=args.only != "push",
            modes=BENCH_ENGINE_MODES[args.compile],
        )
    )


def _bench_train(args: argparse.Namespace) -> int:
    from rlfleet.bench.train_bench import PRESET, run_train_bench
    from rlfleet.learner.config import ConfigError, load_config

    try:
        load_config(None, [*PRESET, *args.overrides])
    except ConfigError as e:
        raise UsageError(str(e)) from None
    return _run(run_train_bench(args.steps, args.warmup, args.overrides))


def _model_init(args: argparse.Namespace) -> int:
    from rlfleet.rollout import commands

    return commands.model_init(args.preset, args.seed, args.out_dir, force=args.force)


def _serve_rollout(args: argparse.Namespace) -> int:
    from rlfleet.rollout import commands

    try:
        config = commands.ServeRolloutConfig(
            server=_server_config(args),
            engine=commands.RolloutEngineConfig(
                kind=args.engine,
                model=args.model,
                device=args.device,
                dtype=args.dtype,
                sglang_surface=args.sglang_surface,
                compile=args.compile,
                threads=args.threads,
            ),
            verifier=args.verifier,
        )
    except ValueError as e:
        raise UsageError(str(e)) from e
    return _run(commands.serve_rollout(config))


def _generate(args: argparse.Namespace) -> int:
    from rlfleet.rollout import commands
    from rlfleet.rollout.records import SamplingParams

    try:
        config = commands.GenerateConfig(
            server=args.server,
            prompts=args.prompts,
            n=args.n,
            sampling=SamplingParams(
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                top_p=args.top_p,
                seed=args.seed,
            ),
        )
    except ValueError as e:
        raise UsageError(str(e)) from e
    return _run(commands.generate(config))


def _push_weights(args: argparse.Namespace) -> int:
    from rlfleet.rollout import commands

    try:
        config = commands.PushWeightsConfig(
            server=args.server,
            model=args.model,
            version=args.version,
            bucket_mb=args.bucket_mb,
            transport=args.transport,
        )
    except ValueError as e:
        raise UsageError(str(e)) from e
    return _run(commands.push_weights(config))


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # (argparse would report them as the top command's)
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    # Servers (and -v) log with times and sources; other commands' warnings are lines of
    # the command's own, as its other messages are.
    plain = not args.verbose and not args.prog.startswith("rlfleet serve")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format=f"{args.prog}: %(levelname)s: %(message)s"
        if plain
        else "%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run: Run = args.run
    try:
        return run(args)
    except CommandError as e:
        if args.verbose:
            traceback.print_exception(e)
        print(f"{args.prog}: {e}", file=sys.stderr)
        return e.exit_code
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"{args.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # The reader went away (`rlfleet verify ... | head`): nobody to tell. Python's own
        # flush of stdout at exit would fail again, so it goes to /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has closed it."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())
