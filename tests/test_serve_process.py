"""`rlfleet serve sandbox` as a real process: metrics over HTTP, `verify --server`, graceful
SIGTERM with a call in flight, and a 10k-case burst with bounded memory that leaves no
process or cgroup behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import dashboard_exprs, nobody_processes, wait_for_sandboxed

from rlfleet.sandbox import cgroups
from rlfleet.sandbox.client import ClientConfig, VerifierClient
from rlfleet.sandbox.records import CodeCase, MathCase, StdioTest, Verdict

RLFLEET = [sys.executable, "-m", "rlfleet.cli"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, *extra: str) -> None:
        self.metrics_port = free_port()
        self.proc = subprocess.Popen(
            [
                *RLFLEET,
                "serve",
                "sandbox",
                "--port",
                "0",
                "--workers",
                "2",
                "--metrics-port",
                str(self.metrics_port),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 60
        self.target = ""
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            if "listening on" in line:
                self.target = line.rsplit(" ", 1)[1].strip()
                break
        assert self.target, f"server did not start (exit {self.proc.poll()})"
        # Keep draining stderr so the server never blocks on a full pipe.
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def rss_peak_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    s = ServerProcess()
    try:
        yield s
    finally:
        s.stop()


def leftovers(pid: int) -> list[Path]:
    h = cgroups.detect()
    return [p for p in cgroups.leftover_bases(h) if p.name.startswith(f"{pid}-")]


def test_metrics_endpoint_and_verify_via_server(server: ServerProcess, tmp_path: Path) -> None:
    cases = tmp_path / "cases.jsonl"
    cases.write_text(
        json.dumps(
            {
                "id": "a",
                "kind": "code",
                "language": "python",
                "code": "print(2)",
                "tests": [{"stdout": "2"}],
            }
        )
        + "\n"
        + json.dumps({"id": "b", "kind": "math", "completion": "\\boxed{3}", "gold": "3"})
        + "\n"
        + "not json\n"
    )
    proc = subprocess.run(
        [*RLFLEET, "verify", str(cases), "--server", server.target],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [x.get("id", x.get("line")) for x in lines] == ["a", "b", 3]
    assert lines[0]["verdict"] == "AC" and lines[1]["verdict"] == "AC"
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
        .read()
        .decode()
    )
    for name in (
        "rlfleet_verifier_cases_total",
        "rlfleet_sandbox_executions_total",
        "rlfleet_sandbox_execution_seconds_bucket",
        "rlfleet_verifier_queue_depth",
        "rlfleet_sandbox_busy_workers",
        "rlfleet_sandbox_worker_restarts_total",
        "rlfleet_math_checks_total",
    ):
        assert name in body, name
    assert 'rlfleet_sandbox_executions_total{language="python",verdict="AC"}' in body


def sleeping_case(seconds: float) -> CodeCase:
    """A case whose program sleeps, then prints 1 (AC)."""
    return CodeCase(
        id="slow",
        language="python",
        code=f"import time\ntime.sleep({seconds})\nprint(1)",
        tests=(StdioTest(stdin="", stdout="1"),),
        time_limit_s=5,
    )


def test_sigterm_finishes_calls_in_flight_then_exits_clean() -> None:
    server = ServerProcess()
    slow = sleeping_case(1.5)

    async def call() -> Verdict:
        async with VerifierClient(server.target, ClientConfig(attempts=1)) as client:
            return (await client.verify(slow)).verdict

    result: list[Verdict] = []
    t = threading.Thread(target=lambda: result.append(asyncio.run(call())))
    t.start()
    # Stop only once the program is running (a process of the sandbox uid is seen), however
    # slow the client is to connect.
    assert wait_for_sandboxed(30), "the slow case never started"
    assert server.stop(timeout=60) == 0
    t.join(30)
    assert result == [Verdict.AC]
    assert leftovers(server.proc.pid) == []
    assert nobody_processes() == []


@pytest.mark.slow
def test_10k_burst_bounded_memory_nothing_left() -> None:
    server = ServerProcess()
    n = 10_000
    cases = [
        MathCase(id=f"m{i}", completion=f"\\boxed{{{i % 7}}}", gold=str(i % 5))
        if i % 5 == 0
        else CodeCase(
            id=f"c{i}",
            language="python",
            code="print(int(input()) * 2)",
            tests=(StdioTest(stdin=str(i), stdout=str(2 * i)),),
        )
        for i in range(n)
    ]

    async def burst() -> dict[str, int]:
        counts: dict[str, int] = {}
        async with VerifierClient(server.target) as client:
            async for r in client.verify_many(cases):
                counts[r.verdict.value] = counts.get(r.verdict.value, 0) + 1
        return counts

    try:
        before = server.rss_peak_mb()
        counts = asyncio.run(burst())
        after = server.rss_peak_mb()
    finally:
        code = server.stop()
    assert sum(counts.values()) == n
    assert counts.get("SE", 0) == 0
    assert counts["AC"] >= n * 4 // 5
    assert after - before < 300, (before, after)  # bounded: not proportional to the burst
    assert code == 0
    assert leftovers(server.proc.pid) == []
    assert nobody_processes() == []
    assert os.path.exists("/proc/self")


def prom_query(port: int, expr: str) -> list[object]:
    """The result of an instant query; raises on a query Prometheus refuses."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        reply = json.loads(urllib.request.urlopen(url, timeout=5).read())
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{expr}: {e.read().decode()}") from e
    assert reply["status"] == "success", (expr, reply)
    return list(reply["data"]["result"])


def test_metrics_pass_promtool_and_a_real_prometheus_scrapes_them(
    server: ServerProcess, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    body = urllib.request.urlopen(url, timeout=10).read()
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    web = free_port()
    config = tmp_path / "prometheus.yml"
    rules = Path(__file__).resolve().parent.parent / "deploy/prometheus/rlfleet-verifier.rules.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{rules}']\n"
        "scrape_configs:\n"
        "  - job_name: rlfleet\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{server.metrics_port}']}}]\n"
    )
    prom = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        query = f"http://127.0.0.1:{web}/api/v1/query?query=rlfleet_sandbox_workers"
        deadline = time.monotonic() + 45
        result: list[object] = []
        while time.monotonic() < deadline and not result:
            time.sleep(1)
            try:
                reply = json.loads(urllib.request.urlopen(query, timeout=5).read())
            except OSError:
                continue
            result = reply["data"]["result"]
        assert result, "Prometheus never scraped rlfleet's metrics"
        assert result[0]["value"][1] == "2"  # type: ignore[index]
        # The shipped rules load and evaluate (an idle server: no worker busy) ...
        deadline = time.monotonic() + 30
        ratio: list[object] = []
        while time.monotonic() < deadline and not ratio:
            time.sleep(1)
            ratio = prom_query(web, "rlfleet:sandbox_busy:ratio")
        assert ratio and ratio[0]["value"][1] == "0"  # type: ignore[index]
        # ... and every query of the shipped dashboard runs.
        for expr in dashboard_exprs():
            prom_query(web, expr.replace("$__rate_interval", "1m"))
    finally:
        prom.terminate()
        prom.wait(30)


def dead_owner_containers(pid: int) -> list[str]:
    import socket

    import docker

    from rlfleet.sandbox.docker_backend import OWNER_LABEL

    owner = f"{socket.gethostname()}:{pid}"
    found = docker.from_env().containers.list(all=True, filters={"label": f"{OWNER_LABEL}={owner}"})
    return [c.name for c in found]


@pytest.mark.parametrize("backend", ["local", pytest.param("docker", marks=pytest.mark.docker)])
def test_a_crashed_server_leaves_nothing_after_the_next_start(backend: str) -> None:
    server = ServerProcess("--backend", backend)
    slow = sleeping_case(1)

    async def call() -> None:
        with contextlib.suppress(Exception):  # the server dies under it
            async with VerifierClient(server.target, ClientConfig(attempts=1)) as client:
                await client.verify(slow)

    caller = threading.Thread(target=lambda: asyncio.run(call()))
    caller.start()
    try:
        assert wait_for_sandboxed(), "the slow case never started"
    finally:
        server.proc.kill()  # a crash: no drain, no cleanup
        server.proc.wait(30)
        caller.join(30)
    dead = server.proc.pid
    # What it ran winds down by itself: a worker's input closes when its server is gone.
    deadline = time.monotonic() + 30
    while nobody_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert nobody_processes() == []
    before = leftovers(dead) if backend == "local" else dead_owner_containers(dead)
    assert before, "the crash left nothing to clean up (the check would prove nothing)"
    # The next server on this host removes the dead one's cgroups or containers.
    second = ServerProcess("--backend", backend)
    try:
        after = leftovers(dead) if backend == "local" else dead_owner_containers(dead)
        assert after == []
    finally:
        assert second.stop() == 0
