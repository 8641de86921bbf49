"""Start-up cost of each compiled or managed language: the same artifact run through the
sandbox and run bare, in the same run.

Each language's program reads a number and prints it plus one. It is built once, in the
sandbox, as a submission is; then its artifact runs ``n`` times through the worker pool
(place the artifact, fork, isolate, exec, judge-side limits) and ``n`` times as a bare
subprocess, with the same command, flags and environment, from a temporary directory:
on this host for the local backend, in a plain container of the sandbox image (its own
runtimes, no worker, no sandbox) for the docker backend. Both at the same parallelism.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rlfleet.sandbox.engine import EngineConfig, make_worker_factory
from rlfleet.sandbox.languages import LANGUAGES, Command, Language
from rlfleet.sandbox.worker_handle import RunLimits, RunRequest
from rlfleet.sandbox.worker_pool import PoolConfig, WorkerPool

PROGRAMS = {
    "cpp": '#include <cstdio>\nint main() { long n; scanf("%ld", &n); printf("%ld\\n", n + 1); }\n',
    "java": "import java.util.*;\npublic class Main { public static void main(String[] a) {"
    " System.out.println(new Scanner(System.in).nextLong() + 1); } }\n",
    "javascript": "console.log(Number(require('fs').readFileSync(0, 'utf8')) + 1);\n",
    "go": 'package main\nimport "fmt"\n'
    "func main() { var n int64; fmt.Scan(&n); fmt.Println(n + 1) }\n",
    "rust": "fn main() { let mut s = String::new(); std::io::stdin().read_line(&mut s).unwrap();"
    ' let n: i64 = s.trim().parse().unwrap(); println!("{}", n + 1); }\n',
}
LIMITS = RunLimits(cpu_s=5, wall_s=20, memory_mb=256)
BARE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True, kw_only=True)
class LanguageTiming:
    compile_s: float
    """Building the program once, in the sandbox."""
    per_test_ms: float
    """Wall time of one test through the pool, at the bench's parallelism."""
    bare_per_test_ms: float
    """The same artifact and command as a bare subprocess, at the same parallelism."""
    cpu_ms: float
    """CPU time (user + system) of one test through the pool: its cgroup's."""
    bare_cpu_ms: float
    """CPU time of one bare run (its rusage): unlike wall time, not inflated by load."""

    @property
    def extra_ms(self) -> float:
        return self.per_test_ms - self.bare_per_test_ms

    @property
    def ratio(self) -> float:
        return self.per_test_ms / self.bare_per_test_ms


async def build(pool: WorkerPool, lang: Language, code: str) -> tuple[bytes, float]:
    path, command = lang.compile_command(code)
    req = RunRequest(
        kind="exec",
        argv=command.argv,
        env=command.env,
        files=((path, code.encode(), 0o644),),
        capture=lang.artifact_path,
        limits=RunLimits(cpu_s=lang.compile_time_s, wall_s=lang.compile_time_s * 2, memory_mb=1536),
    )
    t0 = time.perf_counter()
    facts = await pool.run(req)
    elapsed = time.perf_counter() - t0
    if facts.exit_code != 0 or not facts.artifact:
        message = facts.stderr[:500].decode("utf-8", "replace")
        raise RuntimeError(f"bench: building the {lang.name} program failed: {message}")
    return facts.artifact, elapsed


async def sandbox_runs(
    pool: WorkerPool, lang: Language, command: Command, artifact: bytes, n: int, parallel: int
) -> tuple[float, float]:
    """Per-test wall and CPU ms of n runs of the artifact through the pool."""
    sem = asyncio.Semaphore(parallel)
    cpu = []

    async def one(i: int) -> None:
        req = RunRequest(
            kind="exec",
            argv=command.argv,
            env=command.env,
            files=((lang.artifact_path, artifact, 0o755),),
            stdin=f"{i}\n".encode(),
            limits=LIMITS,
        )
        async with sem:
            facts = await pool.run(req)
        if facts.stdout != f"{i + 1}\n".encode():
            raise RuntimeError(f"bench: {lang.name} run {i} failed: {facts.stderr[:500]!r}")
        cpu.append(facts.cpu_s)

    await asyncio.gather(*(one(i) for i in range(parallel)))  # warm
    cpu.clear()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return (time.perf_counter() - t0) * parallel / n * 1e3, sum(cpu) / n * 1e3


def bare_runs(
    lang: Language, command: Command, artifact: bytes, n: int, parallel: int
) -> tuple[float, float]:
    """Per-test wall and CPU ms of n bare runs of the same artifact and command, from a
    temporary directory."""
    with tempfile.TemporaryDirectory(prefix="rlfleet-bench-") as tmp:
        name = os.path.basename(lang.artifact_path)
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(artifact)
        os.chmod(os.path.join(tmp, name), 0o755)
        argv = [a.replace("/tmp/", f"{tmp}/") for a in command.argv]
        env = {**BARE_ENV, "HOME": tmp, "TMPDIR": tmp, **dict(command.env)}

        def one(i: int) -> float:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=tmp,
                env=env,
            )
            assert proc.stdin and proc.stdout and proc.stderr
            proc.stdin.write(f"{i}\n".encode())
            proc.stdin.close()
            out, err = proc.stdout.read(), proc.stderr.read()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            proc.stdout.close()
            proc.stderr.close()
            if out != f"{i + 1}\n".encode():
                raise RuntimeError(f"bench: bare {lang.name} run {i} failed: {err[:500]!r}")
            return usage.ru_utime + usage.ru_stime

        with ThreadPoolExecutor(parallel) as ex:
            list(ex.map(one, range(parallel)))  # warm
            t0 = time.perf_counter()
            cpu = list(ex.map(one, range(n)))
            return (time.perf_counter() - t0) * parallel / n * 1e3, sum(cpu) / n * 1e3


# Run inside a plain container of the sandbox image (no worker, no sandbox): the bare
# baseline of the docker backend, with the image's own runtimes. Stdlib only. argv[1]: a
# JSON header; the artifact waits in /tmp/bare/.
IN_IMAGE = """
import json, os, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
h = json.loads(sys.argv[1])
env = dict(h["env"], HOME="/tmp/bare", TMPDIR="/tmp/bare")
def one(i):
    p = subprocess.Popen(h["argv"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, cwd="/tmp/bare", env=env)
    p.stdin.write(b"%d\\n" % i)
    p.stdin.close()
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    p.stdout.close()
    if out != b"%d\\n" % (i + 1):
        raise SystemExit("run %d printed %r" % (i, out[:200]))
    return usage.ru_utime + usage.ru_stime
with ThreadPoolExecutor(h["parallel"]) as ex:
    list(ex.map(one, range(h["parallel"])))
    t0 = time.perf_counter()
    cpu = list(ex.map(one, range(h["n"])))
    wall = time.perf_counter() - t0
print(json.dumps([wall * h["parallel"] / h["n"] * 1e3, sum(cpu) / h["n"] * 1e3]))
"""


def bare_runs_in_image(
    lang: Language, command: Command, artifact: bytes, n: int, parallel: int
) -> tuple[float, float]:
    """Per-test wall and CPU ms of n bare runs in a plain container of the sandbox image."""
    import io
    import json
    import tarfile

    import docker

    from rlfleet.sandbox.image import image_tag

    client = docker.from_env(timeout=600)
    argv = [a.replace("/tmp/", "/tmp/bare/") for a in command.argv]
    header = {"argv": argv, "env": {**BARE_ENV, **dict(command.env)}, "n": n, "parallel": parallel}
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        folder = tarfile.TarInfo("bare")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        info = tarfile.TarInfo(f"bare/{os.path.basename(lang.artifact_path)}")
        info.size, info.mode = len(artifact), 0o755
        tar.addfile(info, io.BytesIO(artifact))
    container = client.containers.create(
        image_tag(),
        ["/usr/bin/python3", "-I", "-c", IN_IMAGE, json.dumps(header)],
        network_mode="none",
        labels={"io.rlfleet.bench": "bare"},
    )
    try:
        container.put_archive("/tmp", archive.getvalue())
        container.start()
        status = container.wait(timeout=600)
        out = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
        if status.get("StatusCode") != 0:
            raise RuntimeError(f"bench: bare {lang.name} runs in the image failed: {out[-500:]}")
        wall, cpu = json.loads(out.strip().splitlines()[-1])
        return float(wall), float(cpu)
    finally:
        container.remove(force=True)


async def bench_languages(
    pool: WorkerPool, n: int, parallel: int, in_image: bool = False
) -> dict[str, LanguageTiming]:
    """Each language's figures; ``in_image``: the bare runs in a container of the sandbox
    image (the docker backend's baseline), else on this host."""
    bare_fn = bare_runs_in_image if in_image else bare_runs
    rows = {}
    for name, code in PROGRAMS.items():
        lang = LANGUAGES[name]
        artifact, compile_s = await build(pool, lang, code)
        command = lang.run_command(code, LIMITS.memory_mb)
        ours, cpu = await sandbox_runs(pool, lang, command, artifact, n, parallel)
        bare, bare_cpu = await asyncio.to_thread(bare_fn, lang, command, artifact, n, parallel)
        rows[name] = LanguageTiming(
            compile_s=compile_s,
            per_test_ms=ours,
            bare_per_test_ms=bare,
            cpu_ms=cpu,
            bare_cpu_ms=bare_cpu,
        )
    return rows


async def bench_backend_languages(backend: str, workers: int, n: int) -> dict[str, LanguageTiming]:
    config = EngineConfig(backend=backend, pool=PoolConfig(workers=workers))
    pool = WorkerPool(make_worker_factory(config), config.pool)
    await pool.start()
    try:
        return await bench_languages(pool, n, workers, in_image=backend == "docker")
    finally:
        await pool.close()


def print_languages(backend: str, rows: dict[str, LanguageTiming]) -> None:
    print(
        f"{'backend':8} {'language':10} {'ms/test':>8} {'bare ms':>8} {'extra ms':>8} "
        f"{'ratio':>6} {'cpu ms':>7} {'bare cpu':>8} {'build s':>8}"
    )
    for name, r in rows.items():
        print(
            f"{backend:8} {name:10} {r.per_test_ms:8.1f} {r.bare_per_test_ms:8.1f} "
            f"{r.extra_ms:8.1f} {r.ratio:6.2f} {r.cpu_ms:7.1f} {r.bare_cpu_ms:8.1f} "
            f"{r.compile_s:8.2f}"
        )
