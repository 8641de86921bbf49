"""Per-run cgroups, made and removed by the worker under a base it owns (v1 or v2)."""

import errno
import os
import resource
import signal
import time

from kernel import MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_REMOUNT, mount


class Cgroups:
    """Per-run cgroups under a base the worker owns; v1 (one dir per controller) or v2."""

    exact = True
    """Memory, tasks and CPU time are limited and counted for the run as a whole."""

    def __init__(self, spec):
        self.version = spec["version"]
        # Directory fds stay open across pivot_root: cgroupfs is not mounted in the sandbox.
        if self.version == 2:
            self.dirs = {"unified": os.open(spec["path"], os.O_RDONLY | os.O_DIRECTORY)}
        else:
            self.dirs = {
                ctl: os.open(path, os.O_RDONLY | os.O_DIRECTORY)
                for ctl, path in spec["paths"].items()
            }
        self.run_name = "run"
        self.run_dirs = {}

    def _write(self, dfd, name, value):
        fd = os.open(name, os.O_WRONLY, dir_fd=dfd)
        try:
            os.write(fd, str(value).encode())
        finally:
            os.close(fd)

    def _read(self, dfd, name):
        try:
            fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
        except FileNotFoundError:
            return ""
        try:
            return os.read(fd, 65536).decode()
        finally:
            os.close(fd)

    def create(self, memory_bytes, pids):
        self.remove()
        for ctl, base in self.dirs.items():
            os.mkdir(self.run_name, dir_fd=base)
            self.run_dirs[ctl] = os.open(self.run_name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=base)
        if self.version == 2:
            d = self.run_dirs["unified"]
            self._write(d, "memory.max", memory_bytes)
            self._try_write(d, "memory.swap.max", 0)
            self._write(d, "pids.max", pids)
        else:
            d = self.run_dirs["memory"]
            self._write(d, "memory.limit_in_bytes", memory_bytes)
            self._try_write(d, "memory.memsw.limit_in_bytes", memory_bytes)
            self._write(self.run_dirs["pids"], "pids.max", pids)
        # Opened now, written by init after fork: joining then needs no path lookups.
        return [os.open("cgroup.procs", os.O_WRONLY, dir_fd=d) for d in self.run_dirs.values()]

    def _try_write(self, dfd, name, value):
        try:
            self._write(dfd, name, value)
        except OSError:
            pass

    def _field(self, text, key):
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == key:
                return int(parts[1])
        return 0

    def stats(self):
        """Peak memory (bytes), OOM kills, CPU time (s) of the run's cgroup."""
        if self.version == 2:
            d = self.run_dirs["unified"]
            peak = int(self._read(d, "memory.peak") or 0)
            ooms = self._field(self._read(d, "memory.events"), "oom_kill")
        else:
            d = self.run_dirs["memory"]
            peak = int(self._read(d, "memory.max_usage_in_bytes") or 0)
            ooms = self._field(self._read(d, "memory.oom_control"), "oom_kill")
        return peak, ooms, self.cpu_s()

    def cpu_s(self):
        if self.version == 2:
            return self._field(self._read(self.run_dirs["unified"], "cpu.stat"), "usage_usec") / 1e6
        return int(self._read(self.run_dirs["cpuacct"], "cpuacct.usage") or 0) / 1e9

    def kill_all(self):
        """Kill everything in the run's cgroup; True once it is empty.

        A run joins every hierarchy at once, so one controller's list is the whole run.
        """
        d = self.run_dirs.get("pids", self.run_dirs.get("unified"))
        if d is None:
            return True
        for _ in range(100):
            pids = [int(p) for p in self._read(d, "cgroup.procs").split()]
            if not pids:
                return True
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.001)
        return False

    def remove(self):
        """Remove the run's cgroups (killing what is left, should anything be)."""
        clean = True
        for ctl, base in self.dirs.items():
            for attempt in range(200):
                try:
                    os.rmdir(self.run_name, dir_fd=base)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        raise
                    if attempt == 0:
                        clean = False
                        self._kill_leftover(base)
                    time.sleep(0.001)
            else:
                raise OSError(errno.EBUSY, f"run cgroup ({ctl}) cannot be removed")
        for d in self.run_dirs.values():
            os.close(d)
        self.run_dirs = {}
        return clean

    def _kill_leftover(self, base):
        try:
            fd = os.open(f"{self.run_name}/cgroup.procs", os.O_RDONLY, dir_fd=base)
        except FileNotFoundError:
            return
        try:
            pids = os.read(fd, 1 << 20).split()
        finally:
            os.close(fd)
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


class NoCgroups:
    """The fallback where no cgroup can be had (a user who is not root, nothing delegated):
    the same interface as ``Cgroups``, from what the worker's PID namespace and rlimits give.

    Exact still: everything a run leaves is killed (the worker is PID 1 of the namespace
    every run lives in, so ``kill(-1)`` reaches all of it and nothing else), and the run's
    CPU time once it ended (every process of it is reaped by the worker or by a process the
    worker reaped). Approximated: memory and tasks are limited per process by rlimits set
    in the run (program.set_limits), peak memory is the largest process's resident peak,
    there are no OOM kills to count, and CPU time is not known while the run goes on.
    """

    exact = False

    def __init__(self):
        self._cpu_at_start = 0.0
        self.orphans_maxrss_kb = 0

    def create(self, memory_bytes, pids):
        self._cpu_at_start = self._children_cpu()
        self.orphans_maxrss_kb = 0
        return []

    def _children_cpu(self):
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime

    def cpu_s(self):
        return None  # not known before the run's processes are reaped

    def stats(self):
        return 0, 0, self._children_cpu() - self._cpu_at_start

    def kill_all(self):
        """Kill every process of this PID namespace but the worker, and reap them all;
        True once none is left. (Their peak resident size goes to ``orphans_maxrss_kb``.)"""
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while True:
            try:
                _, _, ru = os.wait4(-1, 0)
            except ChildProcessError:
                return True
            except InterruptedError:
                continue
            self.orphans_maxrss_kb = max(self.orphans_maxrss_kb, ru.ru_maxrss)

    def remove(self):
        return True


def adopt_container_cgroups(spec):
    """Inside a container: make its own cgroups usable for runs, before anything else.

    The cgroup mounts are read-only views, remounted writable here. On v2 the container's
    cgroup (the namespace root) holds the worker's processes, and a cgroup with processes
    cannot have controlled children: every process moves to a leaf first. This must run
    before the worker enters its own PID namespace, where the launcher left outside would
    be invisible in cgroup.procs and so never moved.
    """
    if spec is None:
        return
    paths = [spec["path"]] if spec["version"] == 2 else list(spec["paths"].values())
    if spec.get("remount"):
        for path in paths:
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if spec.get("nested"):
        _make_root_delegable(spec["path"])


def _make_root_delegable(path):
    """cgroup v2: move every process of `path` into a `worker` leaf, then enable the
    controllers for children (a cgroup with processes cannot have controlled children)."""
    leaf = os.path.join(path, "worker")
    os.makedirs(leaf, exist_ok=True)
    with open(os.path.join(path, "cgroup.procs")) as f:
        pids = f.read().split()
    for pid in pids:
        try:
            with open(os.path.join(leaf, "cgroup.procs"), "w") as f:
                f.write(pid)
        except OSError:
            pass  # exited meanwhile, or a kernel thread
    with open(os.path.join(path, "cgroup.controllers")) as f:
        available = f.read().split()
    missing = [c for c in ("memory", "pids") if c not in available]
    if missing:
        raise OSError(errno.ENOENT, f"cgroup controllers not delegated: {', '.join(missing)}")
    # cpu only when delegated: CPU time comes from cpu.stat, which exists without it.
    wanted = [c for c in ("memory", "pids", "cpu") if c in available]
    with open(os.path.join(path, "cgroup.subtree_control"), "w") as f:
        f.write(" ".join(f"+{c}" for c in wanted))
