"""``rlfleet bench sandbox``: sandbox speed against bare interpreter starts, measured together.

For each backend: trivial Python tests (read a number, print it plus one) through the worker
pool at parallelism P, and the same program as bare ``/usr/bin/python3 -c`` subprocesses at
the same P, in the same run. Printed: per-test time of each and their ratio, tests/s through
the pool and through the whole judge (a source of its own per case: syntax check, test,
verdict), and the math checker against math-verify on the same corpus.

Then the same one-test cases where users meet them, with the same number of workers on the
same cores: through ``rlfleet serve sandbox`` (a server process) and ``VerifierClient``
(``verify_many``, here), and through ``rlfleet verify`` (a process reading a JSONL file; its
start-up and shutdown are left out: timed from its first results to its last ones). The
three are measured in turn, in several rounds (every other one in reverse order: a drifting
load favours no path); each is printed as a ratio of the pool's rate
in the same round (the median over the rounds, and their range), and as CPU time per case (every
process involved, read from ``/proc``: the pool's driver and workers; the server's tree and
the client; the verify process's tree) with the pool's CPU per case over it: on a machine
shared with other work the wall-clock rates move with the load, the CPU per case much less.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from rlfleet.bench.proctree import cpu_between, cpu_by_subtree
from rlfleet.errors import CommandError
from rlfleet.sandbox.cgroups import CgroupError
from rlfleet.sandbox.docker_backend import DockerConfig
from rlfleet.sandbox.engine import EngineConfig, make_worker_factory
from rlfleet.sandbox.judge import Judge
from rlfleet.sandbox.records import Case, CodeCase, StdioTest, Verdict
from rlfleet.sandbox.worker_handle import (
    WORKER_SCRIPT,
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
    front_cpu_ms: float = 0.0
    """CPU time per test of the processes that drive the sandbox workers (0: not measured)."""
    sandbox_cpu_ms: float = 0.0
    """CPU time per test of the local backend's workers and the runs they forked."""


@dataclass(frozen=True)
class Cpu:
    """CPU seconds: of the processes driving the sandbox workers, and of the workers."""

    front: float
    sandbox: float

    def __add__(self, other: Cpu) -> Cpu:
        return Cpu(self.front + other.front, self.sandbox + other.sandbox)


Snapshot = dict[int, tuple[str, float]]


def snapshot(pid: int) -> Snapshot:
    """CPU so far of ``pid``'s tree (the local backend's workers are its children; the
    docker backend's live in containers, outside it). The math checker's processes are a
    part of their own, left out of the figures: code cases never use them, and what they
    spend is their start-up (sympy's import, a standby warming up in the background)."""
    return cpu_by_subtree(pid, _part)


def _part(cmdline: str) -> str | None:
    if WORKER_SCRIPT.name in cmdline:
        return "sandbox"
    if "mathcheck.algebra_child" in cmdline:
        return "math"
    return None


def used(before: Snapshot, after: Snapshot) -> Cpu:
    parts = cpu_between(before, after)
    return Cpu(front=parts.get("root", 0.0), sandbox=parts.get("sandbox", 0.0))


def timing(n: int, parallel: int, elapsed: float, cpu: Cpu) -> Timing:
    return Timing(
        per_test_ms=elapsed * parallel / n * 1e3,
        tests_per_s=n / elapsed,
        front_cpu_ms=cpu.front / n * 1e3,
        sandbox_cpu_ms=cpu.sandbox / n * 1e3,
    )


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
    cpu0 = snapshot(os.getpid())  # this process (the driver's threads) and its workers
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    return timing(n, parallel, elapsed, used(cpu0, snapshot(os.getpid())))


def bench_case(i: int) -> dict[str, object]:
    """The bench's one-test case number ``i``, in the case format of ``rlfleet verify``."""
    return {
        "id": str(i),
        "kind": "code",
        "language": "python",
        "code": PROGRAM,
        "tests": [{"stdin": f"{i}\n", "stdout": f"{i + 1}\n"}],
    }


def rlfleet_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlfleet.cli", *args]


def engine_flags(backend: str, workers: int) -> list[str]:
    return ["--backend", backend, "--workers", str(workers)]


class StderrTail:
    """Drains a child's stderr in a thread (it never blocks on a full pipe), keeping the
    last lines for an error message."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self._stream = proc.stderr
        self.lines: deque[str] = deque(maxlen=20)
        self._thread = threading.Thread(target=self._drain, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _drain(self) -> None:
        for line in self._stream:
            self.lines.append(line.rstrip())

    def text(self) -> str:
        return "\n".join(self.lines)


@contextmanager
def sandbox_server(backend: str, workers: int) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``rlfleet serve sandbox`` on a free port: (its process, its target), stopped after."""
    proc = subprocess.Popen(
        rlfleet_command("serve", "sandbox", *engine_flags(backend, workers), "--port", "0"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        target = ""
        seen: list[str] = []
        for line in proc.stderr:
            seen.append(line.rstrip())
            if "listening on " in line:
                target = line.rsplit(" ", 1)[1].strip()
                break
        if not target:
            raise CommandError(
                f"rlfleet serve sandbox did not start (exit {proc.wait()}):\n" + "\n".join(seen)
            )
        StderrTail(proc).start()
        yield proc, target
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def service_runs(backend: str, workers: int, n: int) -> Timing:
    """Cases/s and CPU per case through ``rlfleet serve sandbox`` and ``verify_many``:
    the server's process tree and this process (the client) together."""
    from rlfleet.sandbox.cases import parse_case
    from rlfleet.sandbox.client import VerifierClient

    def cases(start: int, count: int) -> list[Case]:
        return [parse_case(bench_case(i)) for i in range(start, start + count)]

    async def verify_all(client: VerifierClient, batch: list[Case]) -> None:
        async for result in client.verify_many(batch):
            if result.verdict is not Verdict.AC:
                raise RuntimeError(f"bench case {result.id} through the service: {result}")

    with sandbox_server(backend, workers) as (server, target):
        async with VerifierClient(target) as client:
            warm, measured = cases(0, workers * 2), cases(workers * 2, n)
            await verify_all(client, warm)
            await settled(server.pid)
            server0, client0 = snapshot(server.pid), time.process_time()
            t0 = time.perf_counter()
            await verify_all(client, measured)
            elapsed = time.perf_counter() - t0
            server1, client1 = snapshot(server.pid), time.process_time()
    cpu = used(server0, server1) + Cpu(front=client1 - client0, sandbox=0.0)
    return timing(n, workers, elapsed, cpu)


async def settled(pid: int, timeout_s: float = 60.0) -> None:
    """Return once ``pid``'s tree is idle (under 5 % of a core over 0.5 s: the server's
    start-up, its math checker's included, is over), or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    before = snapshot(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        after = snapshot(pid)
        if sum(cpu_between(before, after).values()) < 0.025:
            return
        before = after


def verify_runs(backend: str, workers: int, n: int, settle_s: float = 60.0) -> Timing:
    """Cases/s and CPU per case through ``rlfleet verify`` reading cases from a pipe, over
    ``n`` results once its start-up is over: from the first result after the
    ``2 x workers``-th at which its math checker's processes (which warm up beside the first
    cases) are idle, or after ``settle_s``. Cases are fed until then; its CPU is read while
    it runs."""
    edge = workers * 2
    proc = subprocess.Popen(
        rlfleet_command("verify", "-", *engine_flags(backend, workers)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tail = StderrTail(proc)
    tail.start()
    assert proc.stdin is not None and proc.stdout is not None
    stop = threading.Event()
    written = 0

    def feed() -> None:
        nonlocal written
        stdin = proc.stdin
        assert stdin is not None
        try:
            while not stop.is_set():
                stdin.write(json.dumps(bench_case(written)) + "\n")
                stdin.flush()
                written += 1
        except BrokenPipeError:
            pass  # (verify ended: its exit code says why)
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    cpu0: Snapshot = {}
    cpu1: Snapshot = {}
    t0 = t1 = 0.0
    count = start = 0
    deadline = time.monotonic() + settle_s
    last = snapshot(proc.pid)
    try:
        for line in proc.stdout:
            result = json.loads(line)
            if result.get("verdict") != "AC":
                raise RuntimeError(f"bench case through rlfleet verify: {result}")
            count += 1
            if not start and count >= edge and count % edge == 0:
                now = snapshot(proc.pid)
                idle = cpu_between(last, now).get("math", 0.0) < 0.005
                last = now
                if idle or time.monotonic() > deadline:
                    cpu0, t0, start = now, time.perf_counter(), count
            elif start and count == start + n:
                cpu1, t1 = snapshot(proc.pid), time.perf_counter()
                stop.set()
    finally:
        stop.set()
        feeder.join(30)
        code = proc.wait()
    if code != 0 or count != written or not cpu1:
        raise CommandError(
            f"rlfleet verify exited {code} after {count} of {written} results:\n{tail.text()}"
        )
    return timing(n, workers, t1 - t0, used(cpu0, cpu1))


async def judge_runs(pool: WorkerPool, n: int) -> float:
    """Cases/s through the judge: one-test Python cases, all in flight, each source its
    own (as RL's samples are: no case finds its syntax check cached)."""
    judge = Judge(pool.run)
    cases = [
        CodeCase(
            id=str(i),
            language="python",
            code=f"{PROGRAM}  # {i}",
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


PATHS = ("pool", "service", "verify")


async def bench_backend(
    backend: str, workers: int, n: int, runtime: str = "", rounds: int = 4
) -> dict[str, float]:
    """One backend's figures. The pool, service and verify paths are measured ``rounds``
    times, one after the other in each round (every other round in reverse order), and each
    path's rate is taken as a ratio of
    the pool's rate in its own round: on a shared machine the rates move with the load by
    more than the paths differ, a round's three runs much less. Rates, CPU and ratios are
    the medians over the rounds; ``*_x_low`` and ``*_x_high`` the ratios' range."""
    config = EngineConfig(
        backend=backend, pool=PoolConfig(workers=workers), docker=DockerConfig(runtime=runtime)
    )
    by_round: list[dict[str, Timing]] = []
    judged = 0.0

    async def pool_path() -> Timing:
        nonlocal judged
        pool = WorkerPool(make_worker_factory(config), config.pool)
        await pool.start()
        try:
            ours = await pool_runs(pool, n, workers)
            if not judged:
                judged = await judge_runs(pool, max(n // 2, 1))
        finally:
            await pool.close()  # (each path starts its own processes, as many workers)
        return ours

    measure = {
        "pool": pool_path,
        "service": lambda: service_runs(backend, workers, n),
        "verify": lambda: asyncio.to_thread(verify_runs, backend, workers, n),
    }
    for i in range(rounds):
        # Every other round in reverse (pool, service, verify; verify, service, pool): a
        # load that drifts during a pair of rounds favours no path over the pair.
        order = PATHS if i % 2 == 0 else PATHS[::-1]
        by_round.append({path: await measure[path]() for path in order})
    bare = await asyncio.to_thread(bare_python, n, workers)

    def median(values: Iterator[float]) -> float:
        return statistics.median(list(values))

    row: dict[str, float] = {"rounds": rounds, "judge_cases_per_s": judged}
    for path in PATHS:
        row[f"{path}_per_s"] = median(r[path].tests_per_s for r in by_round)
        row[f"{path}_front_ms"] = median(r[path].front_cpu_ms for r in by_round)
        row[f"{path}_sandbox_ms"] = median(r[path].sandbox_cpu_ms for r in by_round)
        ratios = [r[path].tests_per_s / r["pool"].tests_per_s for r in by_round]
        row[f"{path}_x"] = statistics.median(ratios)
        row[f"{path}_x_low"], row[f"{path}_x_high"] = min(ratios), max(ratios)
    per_test_ms = median(r["pool"].per_test_ms for r in by_round)
    verify_ms = median(r["verify"].per_test_ms for r in by_round)
    return {
        **row,
        "per_test_ms": per_test_ms,
        "bare_per_test_ms": bare.per_test_ms,
        "ratio": per_test_ms / bare.per_test_ms,
        "tests_per_s": row["pool_per_s"],
        "bare_tests_per_s": bare.tests_per_s,
        "verify_bare_ratio": verify_ms / bare.per_test_ms,
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


def print_paths(rows: dict[str, dict[str, float]]) -> None:
    """Each path's rate and CPU per case against the pool's. The CPU ratio charges every
    path the same sandbox CPU per case (the mean of the three measured: the same runs, so
    the differences between them are the machine's load), and its own front CPU."""
    print(
        f"{'backend':8} {'path':8} {'cases/s':>8} {'x pool':>7} {'(range)':>11} "
        f"{'front ms':>9} {'sandbox ms':>11} {'x pool (CPU)':>13}"
    )
    for name, r in rows.items():
        sandbox = sum(r[f"{p}_sandbox_ms"] for p in PATHS) / len(PATHS)
        pool_cpu = r["pool_front_ms"] + sandbox
        for path in PATHS:
            rate, front = r[f"{path}_per_s"], r[f"{path}_front_ms"]
            cpu_ratio = f"{pool_cpu / (front + sandbox):13.2f}" if sandbox else f"{'-':>13}"
            measured = f"{r[f'{path}_sandbox_ms']:11.2f}" if sandbox else f"{'-':>11}"
            spread = f"{r[f'{path}_x_low']:.2f}-{r[f'{path}_x_high']:.2f}"
            print(
                f"{name:8} {path:8} {rate:8.1f} {r[f'{path}_x']:7.2f} {spread:>11} "
                f"{front:9.2f} {measured} {cpu_ratio}"
            )
        print(
            f"{name:8} verify: {r['verify_bare_ratio']:.2f}x a bare `python3 -c` per test "
            f"(the pool alone: {r['ratio']:.2f}x)"
        )


def load_text() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


async def run_sandbox_bench(
    backends: Sequence[str],
    workers: int,
    tests: int,
    math_pairs: int | None,
    runtimes: Sequence[str] = ("runc",),
    language_tests: int = 0,
    rounds: int = 4,
) -> int:
    """Print the sandbox figures of each backend (the docker backend once per OCI runtime
    in ``runtimes``: ``docker`` under runc, ``docker/runsc`` under gVisor), then each
    language's start-up cost (``language_tests`` runs each; 0: skip), then the math
    checker's (``math_pairs`` pairs of its corpus; None: all; 0: skip)."""
    rows: dict[str, dict[str, float]] = {}
    load_before = load_text()
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
            rows[name] = await bench_backend(backend, workers, tests, runtime, rounds)
        except BackendUnavailable as e:
            raise CommandError(str(e)) from e  # (it names the backend and what to do)
        except (WorkerError, CgroupError) as e:
            raise CommandError(f"the {backend} backend cannot start: {e}") from e
    print(
        f"# sandbox: trivial Python tests at parallelism {workers}, "
        "ratio = per-test time / bare `python3 -c` per-test time (same run)"
    )
    print_table(rows)
    print(
        f"# where users meet it: one-test cases through `rlfleet serve sandbox` + VerifierClient "
        f"(service) and through `rlfleet verify` without its start-up (verify), {workers} "
        f"workers each, against the pool driven directly, in {rounds} rounds (pool, service, "
        "verify; the next round in reverse). x pool: rate / the pool's rate in the same "
        "round, the median over the rounds (range: lowest-highest); rates and CPU: medians. "
        "CPU per case: front = the processes driving the workers (the pool's driver; server "
        "and client; verify), "
        "sandbox = the local backend's workers and their runs. "
        "x pool (CPU): (the pool's front + S) / (the path's front + S), S = the mean sandbox "
        "CPU per case of the three"
    )
    print_paths(rows)
    print(f"# machine: before: {load_before}; after: {load_text()}")
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
