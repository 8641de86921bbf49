"""How the local backend isolates runs on this host: which of its three modes, and why.

* ``root``: the process holds CAP_SYS_ADMIN, CAP_SETUID and CAP_SETGID (root on a host, or
  a container granted them): namespaces, cgroups, runs as uid 65534.
* ``rootless-cgroups``: a user who is not root, through an unprivileged user namespace per
  worker, with cgroups in a subtree delegated to that user (systemd ``Delegate=yes``, or
  ``--cgroup-parent`` naming a cgroup the user owns): limits and accounting as exact as
  ``root``'s.
* ``rootless-rlimits``: the same without any cgroup the user may write: memory and tasks
  are limited per process by rlimits instead (docs/sandbox.md says what that changes).

Neither rootless mode needs anything installed setuid.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rlfleet.sandbox import cgroups
from rlfleet.sandbox.worker_handle import WORKER_SCRIPT, BackendUnavailable

ROOT, ROOTLESS_CGROUPS, ROOTLESS_RLIMITS = "root", "rootless-cgroups", "rootless-rlimits"

CAP_SETGID, CAP_SETUID, CAP_SYS_ADMIN = 6, 7, 21
ROOT_CAPABILITIES = (CAP_SETGID, CAP_SETUID, CAP_SYS_ADMIN)

# What a worker's setup does, in a child: a user namespace mapping only this process's ids,
# then the mount, network and PID namespaces and a tmpfs. Prints "ok", or why not.
USERNS_PROBE = """
import os, sys
sys.path.insert(0, sys.argv[1])
from kernel import (CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUTS,
    MS_PRIVATE, MS_REC, enter_user_namespace, mount, unshare)
try:
    enter_user_namespace(int(sys.argv[2]), int(sys.argv[3]))
    unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("rlfleet-probe", "/tmp", "tmpfs", 0, "size=4k")
except OSError as e:
    print(e)
    sys.exit(1)
print("ok")
"""


class LocalModeError(BackendUnavailable):
    """The local backend cannot isolate runs here at all; the message says what is missing."""


@dataclass(frozen=True, kw_only=True)
class LocalMode:
    name: str
    """``root``, ``rootless-cgroups`` or ``rootless-rlimits``."""
    hierarchy: cgroups.Hierarchy | None
    """Where the workers' cgroups go; None in ``rootless-rlimits``."""
    why: str
    """Why this mode, in words."""

    @property
    def rootless(self) -> bool:
        return self.name != ROOT

    def summary(self) -> str:
        """The one line a server logs at start."""
        if self.hierarchy is None:
            where = (
                "no cgroups: memory and tasks limited per process by rlimits,"
                " peak memory and MLE approximate (docs/sandbox.md)"
            )
        else:
            roots = sorted({str(r) for r in self.hierarchy.roots.values()})
            where = f"cgroup v{self.hierarchy.version} under {', '.join(roots)}"
        return f"local backend mode {self.name}: {self.why}; {where}"


def effective_capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def privileged() -> bool:
    caps = effective_capabilities()
    return all(caps >> c & 1 for c in ROOT_CAPABILITIES)


def probe_user_namespaces(python: str = "/usr/bin/python3") -> str:
    """ "" when an unprivileged user namespace with its mount, network and PID namespaces
    can be made here, else why not (in the kernel's words, with a hint)."""
    try:
        proc = subprocess.run(
            [
                python,
                "-I",
                "-S",
                "-c",
                USERNS_PROBE,
                str(WORKER_SCRIPT.parent),
                str(os.getuid()),
                str(os.getgid()),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env={},
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run {python}: {e}"
    if proc.returncode == 0 and proc.stdout.strip() == "ok":
        return ""
    reason = (proc.stdout.strip() or proc.stderr.strip()[-300:]) or f"exit {proc.returncode}"
    return (
        f"unprivileged user namespaces are refused here ({reason}): enable them"
        " (sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone = 1), or in"
        " a container allow unshare and mount (see deploy/k8s/verifier-rootless.yaml)"
    )


def _rootless_hierarchy(parent: str) -> tuple[cgroups.Hierarchy | None, str]:
    """A cgroup subtree this user may work in, and how it was found; or None and why not."""
    if parent:
        named = cgroups.detect(parent)
        denied = cgroups.unwritable(named)
        if denied:
            raise cgroups.CgroupParentError(
                f"cgroup parent {parent!r}: uid {os.getuid()} cannot make cgroups in "
                f"{', '.join(map(str, denied))} (have it chowned to this user, or delegated)"
            )
        return named, f"cgroup parent {parent} owned by uid {os.getuid()}"
    delegated = cgroups.find_delegated()
    if delegated is not None:
        return delegated, "a cgroup delegated to it"
    try:
        version = cgroups.detect().version
    except cgroups.CgroupError:
        return None, "no usable cgroup hierarchy"
    if version == 1:
        return None, "cgroup v1 delegates nothing by itself and no --cgroup-parent was given"
    own = cgroups.own_v2_cgroup()
    return None, (
        f"no cgroup delegated to it at or above its own ({own}): run it in a unit with"
        " Delegate=yes (systemd-run --user -p Delegate=yes) or give --cgroup-parent"
    )


def detect(cgroup_parent: str = "", python: str = "/usr/bin/python3") -> LocalMode:
    """The mode the local backend will use here (cgroups made ready as in ``cgroups.prepare``
    for root; stale cgroups of dead workers removed in a delegated subtree)."""
    if privileged():
        return LocalMode(
            name=ROOT,
            hierarchy=cgroups.prepare(cgroup_parent),
            why="privileged (CAP_SYS_ADMIN, CAP_SETUID)",
        )
    problem = probe_user_namespaces(python)
    if problem:
        raise LocalModeError(f"the local backend cannot start: not privileged, and {problem}")
    who = f"uid {os.getuid()} in user namespaces"
    h, how = _rootless_hierarchy(cgroup_parent)
    if h is None:
        return LocalMode(name=ROOTLESS_RLIMITS, hierarchy=None, why=f"{who}, {how}")
    cgroups.remove_stale_bases(h)
    return LocalMode(name=ROOTLESS_CGROUPS, hierarchy=h, why=f"{who}, {how}")
