"""The local backend for a user who is not root (docs/sandbox.md, Rootless): the hostile
suite run as such a user (rlfleet-ci, made by deploy/host/setup.sh) without any cgroup and
with a delegated one, and what `sandbox prepare` and `verify` say and do as that user.

Root starts each run (tests/rootless_exec.py drops to the user), so this module needs root
as the rest of the local backend's tests do; CI runs it as part of the whole suite."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import CGROUP_PARENT_VAR

from rlfleet.sandbox import cgroups, local_mode

REPO = Path(__file__).resolve().parent.parent
USER = "rlfleet-ci"
EXEC = REPO / "tests" / "rootless_exec.py"
LOCAL_MODE_VAR = "RLFLEET_TEST_LOCAL_MODE"  # (conftest.py checks the mode found against it)

# In the delegated mode the cgroup's part: limits, accounting and clean-up of what a run
# leaves (the rest of the suite runs in the mode without cgroups).
CGROUP_TESTS = "bomb or busy or daemon or parent or thread or disk or escape"


@pytest.fixture(scope="module")
def user(require_root: None) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pytest.fail(f"no user {USER}: deploy/host/setup.sh makes it")


def as_user(
    command: list[str], env: dict[str, str] | None = None, cgroup: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` as the user, with this checkout and interpreter readable to it."""
    argv = [sys.executable, str(EXEC)]
    if cgroup is not None:
        argv += ["--cgroup", str(cgroup)]
    argv += [USER, str(REPO), sys.prefix, sys.base_prefix, "--"]
    argv += ["/usr/bin/env", f"PYTHONPATH={REPO}", "PYTHONDONTWRITEBYTECODE=1", *command]
    return subprocess.run(
        argv,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=840,
    )


def hostile_suite(env: dict[str, str], keyword: str = "", cgroup: Path | None = None) -> str:
    pytest_argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE"]
    pytest_argv += ["--rootdir", str(REPO), "-c", str(REPO / "pyproject.toml")]
    pytest_argv += ["-m", "not docker", str(REPO / "tests" / "test_hostile.py")]
    if keyword:
        pytest_argv += ["-k", keyword]
    proc = as_user(pytest_argv, env, cgroup)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    summary = out.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), summary
    assert not re.search(r"skipped|error|failed", summary), summary
    return summary


@pytest.mark.timeout(900)
def test_hostile_suite_as_a_user_without_cgroups(user: pwd.struct_passwd) -> None:
    # Started from root's cgroup, the user has no cgroup delegated to it: rlimits.
    hostile_suite({LOCAL_MODE_VAR: local_mode.ROOTLESS_RLIMITS})


@pytest.fixture
def delegated_cgroup(user: pwd.struct_passwd) -> Iterator[tuple[str, Path | None]]:
    """A cgroup made for the user and handed to it, as an administrator (v1) or systemd's
    Delegate=yes (v2) would: (its path as --cgroup-parent takes it, the cgroup to start the
    user's process in on v2, where moving processes needs a delegated common ancestor)."""
    h = cgroups.detect()
    name = f"rlfleet-ci-{os.getpid()}"
    start: Path | None = None
    if h.version == 1:
        made = [root / name for root in h.roots.values()]
        parent = name
    else:
        base = h.roots["unified"]
        point = next(
            Path(p)
            for p, fstype, _ in cgroups._mounts()
            if fstype == "cgroup2" and (Path(p) == base or Path(p) in base.parents)
        )
        cgroups._enable_v2_controllers(base)
        made = [base / name]
        parent = str(made[0].relative_to(point))
        start = made[0]
    for d in made:
        d.mkdir()
        for path in [d, *d.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
    try:
        yield parent, start
    finally:
        for d in made:
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                sub.rmdir()
            d.rmdir()


@pytest.mark.timeout(900)
def test_hostile_cgroup_tests_as_a_user_with_a_delegated_cgroup(
    delegated_cgroup: tuple[str, Path | None],
) -> None:
    parent, start = delegated_cgroup
    env = {LOCAL_MODE_VAR: local_mode.ROOTLESS_CGROUPS, CGROUP_PARENT_VAR: parent}
    hostile_suite(env, CGROUP_TESTS, start)


def test_prepare_says_which_mode_and_why(user: pwd.struct_passwd) -> None:
    proc = as_user(
        [sys.executable, "-m", "rlfleet.cli", "sandbox", "prepare", "--backend", "local"]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    mode = [line for line in lines if "mode " in line]
    assert len(mode) == 1, proc.stdout
    assert mode[0].split() == [
        "ok",
        "mode",
        "rootless-rlimits:",
        "uid",
        str(user.pw_uid),
        *mode[0].split()[5:],
    ]
    assert "cgroup v1 delegates nothing" in mode[0] or "Delegate=yes" in mode[0], mode[0]
    assert any(line.strip().startswith("note: no cgroups") for line in lines), proc.stdout


def test_verify_as_a_user_logs_its_mode_once_and_judges_the_examples(
    user: pwd.struct_passwd,
) -> None:
    cases = REPO / "examples" / "cases.jsonl"
    proc = as_user([sys.executable, "-m", "rlfleet.cli", "verify", str(cases)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    mentions = [line for line in proc.stderr.splitlines() if "local backend mode" in line]
    assert len(mentions) == 1, proc.stderr
    assert "rootless-rlimits" in mentions[0]
    verdicts = {r["id"]: r["verdict"] for r in map(json.loads, proc.stdout.splitlines())}
    code = {i: v for i, v in verdicts.items() if i.split("-")[0] in ("py", "cpp")}
    assert len(code) >= 6, verdicts
    for case_id, verdict in code.items():
        expected = case_id.rsplit("-", 1)[1].upper()
        assert verdict == (expected if expected in ("WA", "TLE", "MLE", "CE") else "AC"), case_id


def test_root_is_the_root_mode(require_root: None) -> None:
    mode = local_mode.detect()
    assert mode.name == local_mode.ROOT and not mode.rootless
    assert mode.hierarchy is not None
    assert mode.summary().startswith("local backend mode root: privileged")


def test_a_language_the_rlimit_fallback_cannot_run_is_se_not_a_verdict(
    user: pwd.struct_passwd,
) -> None:
    # Go's runtime reserves far more than it uses: under rlimits alone it cannot start, and
    # that is this fleet's limitation, never the program's verdict (CE, RE or MLE).
    shared = Path(tempfile.mkdtemp(prefix="rlfleet-rootless-"))  # (readable to the user)
    shared.chmod(0o755)
    cases = shared / "go.jsonl"
    case = {
        "id": "go-ok",
        "kind": "code",
        "language": "go",
        "code": 'package main\nimport "fmt"\nfunc main() { fmt.Println(1) }\n',
        "tests": [{"stdin": "", "stdout": "1\n"}],
    }
    cases.write_text(json.dumps(case) + "\n")
    cases.chmod(0o644)
    try:
        proc = as_user([sys.executable, "-m", "rlfleet.cli", "verify", str(cases)])
    finally:
        shutil.rmtree(shared)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = map(json.loads, proc.stdout.splitlines())
    assert result["verdict"] == "SE", result
    assert "cannot run under the local backend's rootless-rlimits isolation" in result["message"]
