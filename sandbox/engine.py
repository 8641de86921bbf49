"""The verifier engine: one object that takes any case and returns its result.

Code cases go to the judge over a pool of sandbox workers (``local`` or ``docker``
backend); math cases go to the math checker (algebra in child processes). The CLI and the
gRPC service both drive this.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rlfleet.sandbox.docker_backend import DockerConfig
from rlfleet.sandbox.judge import Judge, JudgeConfig
from rlfleet.sandbox.mathcheck import AlgebraFault, MathCheckConfig, MathChecker
from rlfleet.sandbox.records import Case, CaseResult, CodeCase, MathCase, Verdict
from rlfleet.sandbox.runcode import ProgramOutcome, ProgramRun, ProgramRunner
from rlfleet.sandbox.worker_handle import RunFacts, RunRequest
from rlfleet.sandbox.worker_pool import PoolConfig, WorkerFactory, WorkerPool

log = logging.getLogger(__name__)

BACKENDS = ("local", "docker")
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    backend: str = "local"
    """Where programs run: ``local`` (namespaces on this host) or ``docker`` (containers)."""
    pool: PoolConfig = field(default_factory=PoolConfig)
    """Sandbox workers: how many programs run at once, and when a worker is replaced."""
    docker: DockerConfig = field(default_factory=DockerConfig)
    """docker backend: its containers (image, caps, OCI runtime: ``runsc`` for gVisor)."""
    cgroup_parent: str = ""
    """local backend: the cgroup its cgroups go under, relative to the hierarchy's root
    (on v1 the same path in each controller's); empty: on v2 this process's own cgroup
    when delegated (systemd ``Delegate=yes``), else (as root) the root this process sees;
    on v1 (as root) each hierarchy's root. Not root and none found: the rlimit fallback."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """How code cases are judged (limits, checkers, rewards)."""
    math: MathCheckConfig = field(default_factory=lambda: MathCheckConfig(processes=1))
    """The math checker (one algebra process by default: most answers never need one)."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: unknown {self.backend!r} (one of {', '.join(BACKENDS)})")
        if self.docker.runtime and self.backend != "docker":
            raise ValueError(f"docker.runtime: only the docker backend has one, not {self.backend}")

    @property
    def workers(self) -> int:
        return self.pool.workers


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.executions = Counter(
            "rlfleet_sandbox_executions",
            "Test executions (and /run_code runs) by language and verdict",
            ["language", "verdict"],
            registry=registry,
        )
        self.execution_seconds = Histogram(
            "rlfleet_sandbox_execution_seconds",
            "Wall time of one sandboxed run (compile, test or checker)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.busy = Gauge(
            "rlfleet_sandbox_busy_workers", "Sandbox workers running a program", registry=registry
        )
        self.workers = Gauge(
            "rlfleet_sandbox_workers", "Sandbox workers configured", registry=registry
        )
        self.restarts = Counter(
            "rlfleet_sandbox_worker_restarts",
            "Sandbox workers replaced (failure, anomaly, recycling or cancellation)",
            registry=registry,
        )
        self.math_checks = Counter(
            "rlfleet_math_checks", "Math checks by result", ["result"], registry=registry
        )
        self.math_seconds = Histogram(
            "rlfleet_math_check_seconds",
            "Wall time of one math check",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


def make_worker_factory(config: EngineConfig) -> WorkerFactory:
    if config.backend == "docker":
        from rlfleet.sandbox.docker_backend import DockerWorkerFactory

        return DockerWorkerFactory(config.docker)
    from rlfleet.sandbox import local_mode
    from rlfleet.sandbox.local_backend import LocalWorker, LocalWorkerConfig, worker_tag

    local = LocalWorkerConfig()
    mode = local_mode.detect(config.cgroup_parent, local.python)
    # Shown by default where runs are isolated otherwise than as root.
    (log.warning if mode.rootless else log.info)("%s", mode.summary())
    return lambda i: LocalWorker(worker_tag(i), mode, local)


def unavailable_languages(config: EngineConfig) -> dict[str, str]:
    """Languages the backend cannot run as configured, each with why: under the local
    backend's rlimit fallback, those whose runtimes reserve more than they use."""
    if config.backend != "local":
        return {}
    from rlfleet.sandbox import local_mode
    from rlfleet.sandbox.languages import LANGUAGES

    if local_mode.privileged():
        return {}
    mode = local_mode.detect(config.cgroup_parent)
    if mode.hierarchy is not None:
        return {}
    return {
        name: f"{name} cannot run under the local backend's {mode.name} isolation (its "
        "runtime reserves more memory than the rlimits it would be held to allow): give it "
        "a writable cgroup (--cgroup-parent) or run as root"
        for name, lang in LANGUAGES.items()
        if lang.needs_cgroups
    }


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        pool: WorkerPool,
        math: MathChecker,
        registry: CollectorRegistry,
    ) -> None:
        self.config = config
        self._pool = pool
        self._math = math
        self.metrics = EngineMetrics(registry)
        self.metrics.workers.set(config.workers)
        self.metrics.busy.set_function(lambda: pool.stats.busy)
        self._restarts_seen = 0
        self.judge = Judge(self._run, config.judge)
        self.unavailable = unavailable_languages(config)
        """Languages this engine cannot run, and why (the local backend's rlimit fallback)."""
        self.runner = ProgramRunner(self._run, config.judge)

    @classmethod
    async def start(cls, config: EngineConfig, registry: CollectorRegistry | None = None) -> Engine:
        pool = WorkerPool(
            make_worker_factory(config),
            config.pool,
        )
        await pool.start()
        try:
            # Its processes take a while to import sympy: start them off the event loop.
            math = await asyncio.to_thread(MathChecker, config.math)
        except BaseException:
            await pool.close()
            raise
        return cls(config, pool, math, registry or CollectorRegistry())

    @property
    def capacity(self) -> int:
        return self._pool.capacity

    async def _run(self, req: RunRequest) -> RunFacts:
        t0 = time.perf_counter()
        try:
            return await self._pool.run(req)
        finally:
            stage = "compile" if req.capture or req.mode == "syntax" else "run"
            self.metrics.execution_seconds.labels(stage).observe(time.perf_counter() - t0)
            restarts = self._pool.stats.restarts
            if restarts > self._restarts_seen:
                self.metrics.restarts.inc(restarts - self._restarts_seen)
                self._restarts_seen = restarts

    async def verify(self, case: Case) -> CaseResult:
        if isinstance(case, MathCase):
            return await self._verify_math(case)
        if case.language in self.unavailable:
            result = CaseResult(
                id=case.id,
                verdict=Verdict.SE,
                passed=0,
                total=len(case.tests),
                reward=0.0,
                message=self.unavailable[case.language],
            )
            self._count(case, result)
            return result
        result = await self.judge.judge(case)
        self._count(case, result)
        return result

    async def run_program(self, program: ProgramRun) -> ProgramOutcome:
        """Run a program as it is (``runcode``); its execution is counted under its outcome
        label (OK for a clean exit, where a judged test says AC or WA)."""
        outcome = await self.runner.run(program)
        self.metrics.executions.labels(program.language.name, outcome.label).inc()
        return outcome

    def _count(self, case: CodeCase, result: CaseResult) -> None:
        if not result.tests:  # CE or SE before any test ran
            self.metrics.executions.labels(case.language, result.verdict.value).inc()
        for t in result.tests:
            self.metrics.executions.labels(case.language, t.verdict.value).inc()

    async def _verify_math(self, case: MathCase) -> CaseResult:
        t0 = time.perf_counter()
        try:
            res = await self._math.check_async(
                case.completion, case.gold, extraction=case.extraction
            )
        except AlgebraFault as e:
            self.metrics.math_checks.labels("fault").inc()
            return CaseResult(
                id=case.id,
                verdict=Verdict.SE,
                passed=0,
                total=1,
                reward=0.0,
                message=f"math checker fault: {e}",
            )
        self.metrics.math_seconds.observe(time.perf_counter() - t0)
        self.metrics.math_checks.labels(res.reason).inc()
        return CaseResult(
            id=case.id,
            verdict=Verdict.AC if res.correct else Verdict.WA,
            passed=int(res.correct),
            total=1,
            reward=1.0 if res.correct else 0.0,
            extracted=res.extracted,
            message="" if res.correct else res.reason,
        )

    async def close(self) -> None:
        await self._pool.close()
        await asyncio.to_thread(self._math.close)
