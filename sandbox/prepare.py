"""`rlfleet sandbox prepare`: check what a backend and the math checker need, and build the
sandbox image for the docker backend when it is missing; then build and run a small program
in every language through the backend's sandbox. Each check prints one line."""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from collections.abc import Collection
from pathlib import Path

import docker
import docker.errors

from rlfleet import deps
from rlfleet.errors import CommandError
from rlfleet.sandbox import cgroups, local_mode
from rlfleet.sandbox.cases import parse_case
from rlfleet.sandbox.engine import EngineConfig, make_worker_factory, unavailable_languages
from rlfleet.sandbox.image import (
    LOCAL_BASE,
    SETUP_HINT,
    STANDARD_BASE,
    BuildError,
    SdkEngine,
    ensure_image,
    image_tag,
    pick_base,
)
from rlfleet.sandbox.judge import Judge, JudgeConfig
from rlfleet.sandbox.languages import LANGUAGES
from rlfleet.sandbox.records import CaseResult, CodeCase, Verdict
from rlfleet.sandbox.worker_handle import WorkerError
from rlfleet.sandbox.worker_pool import PoolConfig, WorkerPool

PROBE_LINE = "rlfleet-probe 42"


async def _probe_languages(
    backend: str, cgroup_parent: str, skip: Collection[str] = ()
) -> list[tuple[str, CaseResult, float]]:
    """Each language's probe program (but ``skip``'s), built and run by one worker of the
    backend."""
    factory = make_worker_factory(EngineConfig(backend=backend, cgroup_parent=cgroup_parent))
    pool = WorkerPool(factory, PoolConfig(workers=1))
    await pool.start()
    try:
        judge = Judge(pool.run, JudgeConfig(se_retries=0))
        results = []
        for lang in LANGUAGES.values():
            if lang.name in skip:
                continue
            case = parse_case(
                {
                    "id": lang.name,
                    "kind": "code",
                    "language": lang.name,
                    "code": lang.probe,
                    "tests": [{"stdin": PROBE_LINE + "\n", "stdout": PROBE_LINE + "\n"}],
                    "time_limit_s": 5,
                }
            )
            assert isinstance(case, CodeCase)
            t0 = time.perf_counter()
            result = await judge.judge(case)
            results.append((lang.name, result, time.perf_counter() - t0))
        return results
    finally:
        await pool.close()


def check_languages(backend: str, cgroup_parent: str = "") -> bool:
    """Build and run a small program in every language, as submissions are: one line each."""
    unavailable = unavailable_languages(EngineConfig(backend=backend, cgroup_parent=cgroup_parent))
    try:
        results = asyncio.run(_probe_languages(backend, cgroup_parent, unavailable))
    except WorkerError as e:
        return _check(False, "a sandbox worker", str(e))
    for why in unavailable.values():
        # (Not a fault of this host's set-up: what this mode cannot do; such cases are SE.)
        print(f"  note: {why}", flush=True)
    ok = True
    for name, result, seconds in results:
        lang = LANGUAGES[name]
        if backend == "docker":
            hint = "the sandbox image lacks it (rebuild: deploy/host/setup.sh)"
        else:
            hint = f"apt-get install {' '.join(lang.packages)}"
        detail = (result.message or "").strip().splitlines()
        ok &= _check(
            result.verdict is Verdict.AC,
            f"{name}: built and ran a program ({seconds:.1f} s)"
            if result.verdict is Verdict.AC
            else f"{name}: {result.verdict.value} {detail[0] if detail else ''}".rstrip(),
            hint,
        )
    return ok


def _check(ok: bool, what: str, hint: str = "") -> bool:
    mark = "ok     " if ok else "MISSING"
    print(f"  {mark} {what}" + (f": {hint}" if hint and not ok else ""), flush=True)
    return ok


def _docker_socket() -> Path | None:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return Path(host.removeprefix("unix://")) if host.startswith("unix://") else None


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def prepare_docker() -> int:
    print("docker backend:")
    sock = _docker_socket()
    if sock is not None and not sock.exists():
        _check(
            False,
            "a Docker engine",
            f"no engine running (no socket {sock}); start one with {SETUP_HINT}",
        )
        return 1
    if sock is not None and not os.access(sock, os.R_OK | os.W_OK):
        _check(
            False,
            "a Docker engine",
            f"no permission on {sock}: run as root or as a member of its group "
            f"({_group_name(sock.stat().st_gid)})",
        )
        return 1
    try:
        client = docker.from_env(timeout=600)
        client.ping()
        version = client.version()
    except (docker.errors.DockerException, OSError) as e:
        _check(False, "a Docker engine answering", f"{e}; start one with {SETUP_HINT}")
        return 1
    _check(True, f"Docker engine {version.get('Version', '?')} (API {version.get('ApiVersion')})")
    runtimes = sorted(client.info().get("Runtimes", {}))
    if "runsc" not in runtimes:
        # Optional: only `--runtime runsc` (gVisor) needs it.
        print(
            f"  note: runtimes {', '.join(runtimes) or 'none'}; --runtime runsc needs gVisor's "
            f"runsc registered with the engine ({SETUP_HINT} does it)"
        )
    engine = SdkEngine(client)
    if not engine.has_image(image_tag()) and pick_base(engine) is None:
        print(f"  note: neither {STANDARD_BASE} nor {LOCAL_BASE} is here; trying a pull")
    try:
        tag = ensure_image(client, progress=lambda line: print(f"    {line}", flush=True))
    except (BuildError, docker.errors.DockerException, OSError) as e:
        _check(False, "the sandbox image", str(e))
        return 1
    _check(True, f"sandbox image {tag}")
    print(tag)
    return 0 if check_languages("docker") else 1


def _isolation(cgroup_parent: str) -> bool:
    """The mode the local backend will use here and why (see ``local_mode``)."""
    try:
        mode = local_mode.detect(cgroup_parent)
    except (cgroups.CgroupError, local_mode.LocalModeError) as e:
        return _check(False, "isolation", str(e))
    ok = _check(True, f"mode {mode.name}: {mode.why}")
    h = mode.hierarchy
    if h is None:
        print(
            "  note: no cgroups: memory and tasks are limited per process (rlimits), peak"
            " memory and MLE are approximate (docs/sandbox.md, Rootless)",
            flush=True,
        )
        return ok
    unwritable = [str(p) for p in cgroups.unwritable(h)]
    controllers = ", ".join(h.roots) if h.version == 1 else "memory, pids, cpu"
    where = ", ".join(sorted({str(r) for r in h.roots.values()}))
    if unwritable:
        return _check(False, f"cgroup v{h.version} not writable here: {', '.join(unwritable)}")
    return _check(True, f"cgroup v{h.version} ({controllers}) writable under {where}")


def prepare_local(cgroup_parent: str = "") -> int:
    print("local backend:")
    ok = _isolation(cgroup_parent)
    ok &= _check(
        os.access("/usr/bin/python3", os.X_OK), "/usr/bin/python3", "apt-get install python3"
    )
    try:
        ctypes.CDLL("libseccomp.so.2")
        ok &= _check(True, "libseccomp.so.2 loads")
    except OSError as e:
        ok &= _check(False, "libseccomp.so.2", f"{e}; apt-get install libseccomp2")
    if not ok:
        return 1
    return 0 if check_languages("local", cgroup_parent) else 1


# A correct answer that only the symbolic path (latex2sympy, sympy) can prove.
MATH_PROBE = ("\\boxed{\\sin^2 x + \\cos^2 x}", "1")


def prepare_math() -> int:
    """The math checker: its dependencies installed and its algebra proving a known case."""
    from rlfleet.sandbox.mathcheck import AlgebraStartError, MathCheckConfig, MathChecker

    print("math checker:")
    absent = deps.missing()
    if absent:
        _check(False, "runtime dependencies", str(deps.MissingDependency(absent)))
        return 1
    _check(True, "runtime dependencies installed")
    try:
        with MathChecker(MathCheckConfig(processes=1, timeout_s=30, wall_limit_s=60)) as checker:
            result = checker.check(*MATH_PROBE)
    except AlgebraStartError as e:
        _check(False, "the algebra process", str(e))
        return 1
    completion, gold = MATH_PROBE
    return (
        0
        if _check(
            result.correct,
            "symbolic equivalence (sympy, latex2sympy2_extended)",
            f"{completion} against {gold} gave {result.reason}",
        )
        else 1
    )


def prepare(backend: str, cgroup_parent: str = "") -> int:
    """`rlfleet sandbox prepare --backend B`: check (and for docker build) what the backend
    and the math checker need, printing each check; 0 when ready, else ``CommandError``."""
    if backend == "docker":
        status = prepare_docker()
    elif backend == "local":
        status = prepare_local(cgroup_parent)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    if prepare_math() or status:
        raise CommandError(
            f"not ready for the {backend} backend: fix what is MISSING above, then run this again"
        )
    return 0
