"""Where the local backend's workers get their cgroups: v1 (one tree per controller) or v2.

Each worker gets a base cgroup it owns (``rlfleet/<tag>``); inside it, the worker creates and
removes one ``run`` cgroup per execution. This module only finds the hierarchy and makes or
removes the bases; limits and accounting are the worker's business.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

V1_CONTROLLERS = ("memory", "pids", "cpuacct")
V2_CONTROLLERS = ("memory", "pids")
"""Required on v2; ``cpu`` is enabled too where available (CPU time comes from cpu.stat,
which every v2 cgroup has)."""


class CgroupError(RuntimeError):
    pass


class CgroupParentError(CgroupError):
    """The cgroup parent asked for cannot be used (no such cgroup, or not cgroup v2)."""


@dataclass(frozen=True, kw_only=True)
class Hierarchy:
    version: int
    roots: dict[str, Path]
    """v1: controller -> mount point; v2: {"unified": mount point}."""

    def spec(self, tag: str) -> dict[str, object]:
        """The worker's view of its base cgroup, as sent in its setup frame."""
        if self.version == 2:
            return {"version": 2, "path": str(self.roots["unified"] / "rlfleet" / tag)}
        return {
            "version": 1,
            "paths": {c: str(r / "rlfleet" / tag) for c, r in self.roots.items()},
        }

    def base_dirs(self, tag: str) -> list[Path]:
        return [root / "rlfleet" / tag for root in self.roots.values()]


def _mountinfo() -> list[tuple[str, str, list[str], list[str]]]:
    """(mount point, fs type, super options, mount options) from /proc/self/mountinfo."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 6 and len(tail) >= 3:
            out.append((fields[4], tail[0], tail[2].split(","), fields[5].split(",")))
    return out


def _mounts() -> list[tuple[str, str, list[str]]]:
    """(mount point, fs type, super options) of every mount."""
    return [(point, fstype, opts) for point, fstype, opts, _ in _mountinfo()]


def make_writable(h: Hierarchy) -> list[str]:
    """Remount read-only cgroup mounts under ``h`` writable; returns the ones remounted.

    A container (not privileged) sees its own cgroups read-only; with CAP_SYS_ADMIN it may
    remount them in its own mount namespace, as the docker backend's worker does. On a host
    the mounts are writable already and nothing happens.
    """
    # The worker's own remount (same call, same flags), from its stdlib-only kernel module.
    from rlfleet.sandbox.worker import kernel

    flags = kernel.MS_REMOUNT | kernel.MS_BIND | kernel.MS_NOSUID | kernel.MS_NODEV
    remounted = []
    for point, fstype, _, mount_opts in _mountinfo():
        if fstype not in ("cgroup", "cgroup2") or "ro" not in mount_opts:
            continue
        if not any(root == Path(point) or Path(point) in root.parents for root in h.roots.values()):
            continue
        try:
            kernel.mount(None, point, None, flags | kernel.MS_NOEXEC)
        except OSError as e:
            raise CgroupError(
                f"cgroup mount {point} is read-only and cannot be remounted ({e.strerror}):"
                " in a container, grant CAP_SYS_ADMIN or run it privileged"
            ) from e
        remounted.append(point)
    return remounted


def own_v2_cgroup() -> str:
    """This process's cgroup v2 path (relative to the hierarchy's root), e.g. ``/``."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return "/"


def is_delegated(path: Path) -> bool:
    """Whether a cgroup was handed to its processes to manage (systemd ``Delegate=yes``)."""
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(path, name) == b"1":
                return True
        except OSError:
            continue
    return False


def _v2_parent(point: Path, parent: str) -> Path:
    """Where ``rlfleet/`` goes on v2: an explicit parent, else the delegated cgroup this
    process runs in (a systemd unit with ``Delegate=yes``), else the root of the hierarchy
    this process sees (the host's, or a container's own cgroup namespace)."""
    if parent:
        path = point / parent.strip("/")
        if not (path / "cgroup.controllers").is_file():
            raise CgroupParentError(f"cgroup parent {parent!r}: no such cgroup under {point}")
        return path
    own = point / own_v2_cgroup().strip("/")
    # The nearest delegated cgroup at or above this process's own: after a first start has
    # moved the server into the unit's `main` leaf, the unit is still the one to use.
    for candidate in (own, *own.parents):
        if candidate == point or point not in candidate.parents:
            break
        if is_delegated(candidate):
            return candidate
    return point


def detect(parent: str = "") -> Hierarchy:
    """Find a usable hierarchy: v2 when it has memory and pids, else v1's controllers.

    ``parent`` names the cgroup under which the workers' cgroups are made, relative to the
    hierarchy's root (on v1: the same path in each controller's hierarchy); empty: on v2
    decided as ``_v2_parent`` says, on v1 each hierarchy's root.
    """
    mounts = _mounts()
    for point, fstype, _ in mounts:
        if fstype != "cgroup2":
            continue
        # (A v2 hierarchy without the controllers is the "unified" one of a hybrid host.)
        available = (Path(point) / "cgroup.controllers").read_text().split()
        if not all(c in available for c in V2_CONTROLLERS):
            continue
        base = _v2_parent(Path(point), parent)
        controllers = (base / "cgroup.controllers").read_text().split()
        if all(c in controllers for c in V2_CONTROLLERS):
            return Hierarchy(version=2, roots={"unified": base})
        if base != Path(point):
            raise CgroupError(
                f"cgroup {base} lacks controllers: has {' '.join(controllers) or 'none'}, "
                f"needs {' '.join(V2_CONTROLLERS)} (delegate them to it)"
            )
    roots: dict[str, Path] = {}
    for point, fstype, opts in mounts:
        if fstype == "cgroup":
            for c in V1_CONTROLLERS:
                if c in opts and c not in roots:
                    roots[c] = Path(point)
    missing = [c for c in V1_CONTROLLERS if c not in roots]
    if missing:
        raise CgroupError(
            "no usable cgroup hierarchy: need cgroup v2 with memory and pids "
            f"controllers, or cgroup v1 with {', '.join(V1_CONTROLLERS)} "
            f"(missing: {', '.join(missing)})"
        )
    if parent:
        # v1: the same cgroup path in each controller's hierarchy.
        roots = {c: root / parent.strip("/") for c, root in roots.items()}
        absent = [str(r) for r in roots.values() if not (r / "cgroup.procs").is_file()]
        if absent:
            raise CgroupParentError(f"cgroup parent {parent!r}: no such cgroup {', '.join(absent)}")
    return Hierarchy(version=1, roots=roots)


def unwritable(h: Hierarchy) -> list[Path]:
    """The roots of ``h`` this process cannot make cgroups in."""
    return [r for r in h.roots.values() if not os.access(r, os.W_OK | os.X_OK)]


def find_delegated() -> Hierarchy | None:
    """For a process that is not root: the nearest cgroup v2 at or above its own that was
    delegated to it (systemd ``Delegate=yes``: a user service, ``systemd-run --user
    -p Delegate=yes``) and that it may write, with the memory and pids controllers; None
    where there is none (cgroup v1 has no delegation to find: name one with a parent)."""
    for point, fstype, _ in _mounts():
        if fstype != "cgroup2":
            continue
        root = Path(point)
        own = root / own_v2_cgroup().strip("/")
        for candidate in (own, *own.parents):
            if candidate == root or root not in candidate.parents:
                break
            if not (is_delegated(candidate) and os.access(candidate, os.W_OK | os.X_OK)):
                continue
            try:
                controllers = (candidate / "cgroup.controllers").read_text().split()
            except OSError:
                continue
            if all(c in controllers for c in V2_CONTROLLERS):
                return Hierarchy(version=2, roots={"unified": candidate})
    return None


HOST_LEAF = "main"
"""On v2, where the processes already in the parent cgroup move (see ``_vacate``)."""


def _enable_v2_controllers(path: Path, vacate: bool = True) -> None:
    control = path / "cgroup.subtree_control"
    available = (path / "cgroup.controllers").read_text().split()
    wanted = " ".join(f"+{c}" for c in (*V2_CONTROLLERS, "cpu") if c in available)
    try:
        control.write_text(wanted)
    except OSError as e:
        if vacate and e.errno == errno.EBUSY and (path / "cgroup.type").exists():
            # A non-root cgroup with processes in it cannot have controlled children.
            _vacate(path)
            return _enable_v2_controllers(path, vacate=False)
        hint = " (in a container, run it privileged)" if e.errno == errno.EROFS else ""
        raise CgroupError(f"cannot enable {wanted} in {control}: {e.strerror}{hint}") from e


def _vacate(path: Path) -> None:
    """Move every process of a cgroup into its ``main`` leaf: the processes of a delegated
    unit, or of a container whose cgroup namespace root is ``path``."""
    leaf = path / HOST_LEAF
    leaf.mkdir(exist_ok=True)
    for _ in range(10):
        pids = (path / "cgroup.procs").read_text().split()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, OSError):
                (leaf / "cgroup.procs").write_text(pid)
    raise CgroupError(f"cannot move the processes of {path} into {leaf}")


@dataclass(frozen=True, kw_only=True)
class BaseLimits:
    """Caps on a whole worker (itself and all its runs), whatever the per-run limits say."""

    memory_mb: int = 8192
    pids: int = 1024


def create_base(h: Hierarchy, tag: str, limits: BaseLimits) -> None:
    """Make ``rlfleet/<tag>`` with its caps, and the ``worker`` leaf the worker process joins."""
    for name, root in h.roots.items():
        parent = root / "rlfleet"
        try:
            parent.mkdir(exist_ok=True)
            if h.version == 2:
                _enable_v2_controllers(root)
                _enable_v2_controllers(parent)
            base = parent / tag
            base.mkdir(exist_ok=True)
            if h.version == 2:
                _enable_v2_controllers(base)
                (base / "memory.max").write_text(str(limits.memory_mb << 20))
                (base / "pids.max").write_text(str(limits.pids))
            elif name == "memory":
                (base / "memory.limit_in_bytes").write_text(str(limits.memory_mb << 20))
            elif name == "pids":
                (base / "pids.max").write_text(str(limits.pids))
            (base / "worker").mkdir(exist_ok=True)
        except CgroupError:
            raise
        except OSError as e:
            hint = " (in a container, run it privileged)" if e.errno == errno.EROFS else ""
            raise CgroupError(f"cannot create cgroup under {parent}: {e.strerror}{hint}") from e


def join_worker_leaf(h: Hierarchy, tag: str, pid: int) -> None:
    for root in h.roots.values():
        (root / "rlfleet" / tag / "worker" / "cgroup.procs").write_text(str(pid))


def procs_in_base(h: Hierarchy, tag: str) -> set[int]:
    """Every process in a worker's cgroups (worker and runs)."""
    pids: set[int] = set()
    for base in h.base_dirs(tag):
        for procs in base.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def _kill_tree(path: Path) -> None:
    for procs in path.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def remove_base(h: Hierarchy, tag: str, timeout_s: float = 5.0) -> bool:
    """Kill anything left in the worker's cgroups and remove them (children first)."""
    ok = True
    for base in h.base_dirs(tag):
        if not base.exists():
            continue
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                _kill_tree(base)
                dirs = sorted(
                    (p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
                )
                for d in [*dirs, base]:
                    d.rmdir()
                break
            except FileNotFoundError:
                # Another server sweeping the same stale cgroups got there first (two
                # servers starting at once on a host): done once the base is gone.
                if not base.exists():
                    break
                if time.monotonic() > deadline:
                    ok = False
                    break
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                    ok = False
                    break
                time.sleep(0.01)
    return ok


def leftover_bases(h: Hierarchy) -> list[Path]:
    """Worker cgroups still present (for leak checks and cleanup)."""
    out: list[Path] = []
    for root in h.roots.values():
        parent = root / "rlfleet"
        if parent.is_dir():
            out.extend(p for p in parent.iterdir() if p.is_dir())
    return out


def prepare(parent: str = "") -> Hierarchy:
    """The hierarchy a local backend works in, ready for use: found, made writable where a
    container sees it read-only, and cleared of a crashed owner's leftovers."""
    h = detect(parent)
    for point in make_writable(h):
        log.info("remounted the read-only cgroup mount %s writable", point)
    removed = remove_stale_bases(h)
    if removed:
        log.info("removed %d cgroups left by sandbox workers of processes now gone", removed)
    return h


def remove_stale_bases(h: Hierarchy) -> int:
    """Remove worker cgroups whose owning process (the tag's pid) is gone; returns how many."""
    removed = 0
    for base in leftover_bases(h):
        owner = base.name.split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            removed += remove_base(h, base.name)
    return removed
