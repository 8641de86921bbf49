"""``rlfleet bench sandbox``: sandbox speed against bare interpreter starts, measured together.

For each backend: trivial Python tests (read a number, print it plus one) through the worker
pool at parallelism P, and the same program as bare ``/usr/bin/python3 -c`` subprocesses at
the same P, in the same run. Printed: per-test time of each and their ratio, tests/s through
the pool and through the whole judge (syntax check + test + verdict), and the math checker
against math-verify on the same corpus.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rlfleet.errors import CommandError
from rlfleet.sandbox.cgroups import CgroupError
from rlfleet.sandbox.docker_backend import DockerConfig
from rlfleet.sandbox.engine import EngineConfig, make_worker_factory
from rlfleet.sandbox.judge import Judge
from rlfleet.sandbox.records import CodeCase, StdioTest, Verdict
from rlfleet.sandbox.worker_handle import (
    BackendUnavailable,
    RunLimits,
    RunRequest,
    WorkerError,
)
from rlfleet.sandbox.worker_pool import PoolConfig, WorkerPool

PROGRAM = "print(int(input()) + 1)"
BARE_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class Timing:
    per_test_ms: float
    tests_per_s: float


def bare_python(n: int, parallel: int) -> Timing:
    """n bare interpreter runs, `parallel` at a time (the baseline)."""

    def one(i: int) -> None:
        out = subprocess.run(
            [BARE_PYTHON, "-c", PROGRAM],
            input=f"{i}\n",
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout == f"{i + 1}\n"

    with ThreadPoolExecutor(parallel) as ex:
        list(ex.map(one, range(min(parallel * 2, n))))  # warm the page cache
        t0 = time.perf_counter()
        list(ex.map(one, range(n)))
        elapsed = time.perf_counter() - t0
    return Timing(per_test_ms=elapsed * parallel / n * 1e3, tests_per_s=n / elapsed)


async def pool_runs(pool: WorkerPool, n: int, parallel: int) -> Timing:
    limits = RunLimits(cpu_s=2, wall_s=5)
    sem = asyncio.Semaphore(parallel)

    async def one(i: int) -> None:
        async with sem:
            facts = await pool.run(
                RunRequest(kind="python", code=PROGRAM, stdin=f"{i}\n".encode(), limits=limits)
            )
        if facts.stdout != f"{i + 1}\n".encode():
            raise RuntimeError(f"bench run {i} failed: {facts}")

    await asyncio.gather(*(one(i) for i in range(parallel * 2)))
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    return Timing(per_test_ms=elapsed * parallel / n * 1e3, tests_per_s=n / elapsed)


async def judge_runs(pool: WorkerPool, n: int) -> float:
    """Cases/s through the judge: one-test Python cases, all in flight."""
    judge = Judge(pool.run)
    cases = [
        CodeCase(
            id=str(i),
            language="python",
            code=PROGRAM,
            tests=(StdioTest(stdin=f"{i}\n", stdout=f"{i + 1}\n"),),
        )
        for i in range(n)
    ]
    t0 = time.perf_counter()
    results = await asyncio.gather(*(judge.judge(c) for c in cases))
    elapsed = time.perf_counter() - t0
    bad = [r for r in results if r.verdict is not Verdict.AC]
    if bad:
        raise RuntimeError(f"{len(bad)} bench cases not AC, e.g. {bad[0]}")
    return n / elapsed


async def bench_backend(backend: str, workers: int, n: int, runtime: str = "") -> dict[str, float]:
    config = EngineConfig(
        backend=backend, pool=PoolConfig(workers=workers), docker=DockerConfig(runtime=runtime)
    )
    pool = WorkerPool(make_worker_factory(config), config.pool)
    await pool.start()
    try:
        ours = await pool_runs(pool, n, workers)
        judged = await judge_runs(pool, max(n // 2, 1))
    finally:
        await pool.close()
    bare = await asyncio.to_thread(bare_python, n, workers)
    return {
        "per_test_ms": ours.per_test_ms,
        "bare_per_test_ms": bare.per_test_ms,
        "ratio": ours.per_test_ms / bare.per_test_ms,
        "tests_per_s": ours.tests_per_s,
        "bare_tests_per_s": bare.tests_per_s,
        "judge_cases_per_s": judged,
    }


def print_table(rows: dict[str, dict[str, float]]) -> None:
    print(
        f"{'backend':12} {'ms/test':>9} {'bare ms':>9} {'ratio':>7} {'tests/s':>9} "
        f"{'bare/s':>8} {'judged/s':>9}"
    )
    for name, r in rows.items():
        print(
            f"{name:12} {r['per_test_ms']:9.2f} {r['bare_per_test_ms']:9.2f} {r['ratio']:7.2f} "
            f"{r['tests_per_s']:9.1f} {r['bare_tests_per_s']:8.1f} {r['judge_cases_per_s']:9.1f}"
        )


async def run_sandbox_bench(
    backends: Sequence[str],
    workers: int,
    tests: int,
    math_pairs: int | None,
    runtimes: Sequence[str] = ("runc",),
    language_tests: int = 0,
) -> int:
    """Print the sandbox figures of each backend (the docker backend once per OCI runtime
    in ``runtimes``: ``docker`` under runc, ``docker/runsc`` under gVisor), then each
    language's start-up cost (``language_tests`` runs each; 0: skip), then the math
    checker's (``math_pairs`` pairs of its corpus; None: all; 0: skip)."""
    rows: dict[str, dict[str, float]] = {}
    runs = [
        (backend, runtime)
        for backend in backends
        for runtime in (runtimes if backend == "docker" else ("",))
    ]
    for backend, runtime in runs:
        name = f"{backend}/{runtime}" if runtime and runtime != "runc" else backend
        print(
            f"rlfleet bench sandbox: {name} backend, {workers} workers, {tests} tests ...",
            file=sys.stderr,
        )
        try:
            rows[name] = await bench_backend(backend, workers, tests, runtime)
        except BackendUnavailable as e:
            raise CommandError(str(e)) from e  # (it names the backend and what to do)
        except (WorkerError, CgroupError) as e:
            raise CommandError(f"the {backend} backend cannot start: {e}") from e
    print(
        f"# sandbox: trivial Python tests at parallelism {workers}, "
        "ratio = per-test time / bare `python3 -c` per-test time (same run)"
    )
    print_table(rows)
    if language_tests:
        from rlfleet.bench.language_bench import bench_backend_languages, print_languages

        print(
            f"# languages: a program that reads a number and prints it plus one, "
            f"{language_tests} runs at parallelism {workers}; bare = the same artifact and "
            "command as a plain subprocess, on this host (local) or in a plain container of "
            "the sandbox image (docker), in the same run"
        )
        for backend in backends:
            print(f"rlfleet bench sandbox: {backend} backend, languages ...", file=sys.stderr)
            timings = await bench_backend_languages(backend, workers, language_tests)
            print_languages(backend, timings)
    if math_pairs != 0:
        from rlfleet.bench.math_bench import run_math_bench

        print(
            "rlfleet bench sandbox: math checker (vs math-verify where installed) ...",
            file=sys.stderr,
        )
        # In this (main) thread: math-verify's own timeout relies on signal.alarm.
        report = run_math_bench(math_pairs)
        print("# math")
        for key, value in report.items():
            shown = f"{value:.4g}" if isinstance(value, float) else value
            print(f"{key:32} {shown}")
    return 0
