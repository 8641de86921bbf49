"""rlfleet sandbox worker: a warm fork server that runs untrusted programs, one at a time.

Stdlib only, started as ``/usr/bin/python3 -I -S zygote.py`` (as root, on the host for the
``local`` backend or inside a long-lived container for the ``docker`` backend) and driven
over its stdin/stdout with length-prefixed frames (see ``read_frame``/``write_frame``).

Isolation is set up in two layers so that a run pays only for a fork:

* once, for the worker itself: it continues as PID 1 of a new PID namespace (killed by the
  kernel, with everything it started, when its launcher dies); private mount, network, IPC
  and UTS namespaces; a new root built on a tmpfs holding read-only binds of ``/usr`` (and
  the merged-/usr links), a few synthetic files in ``/etc``, a minimal ``/dev`` and a
  size-capped tmpfs ``/tmp``. No ``/proc``, ``/sys``, ``/home`` or anything else of the host
  is visible; the network namespace has only a ``lo`` that stays down. A seccomp filter is
  loaded here once and inherited by every run.
* per run: a fresh cgroup (memory, pids, CPU accounting; v1 or v2) with the run's limits,
  joined by the forked child before anything else; then a new session, rlimits, an empty
  environment, uid/gid 65534, fds 0-2 only. The run cannot leave its cgroup, so when the
  program exits everything it left (daemons, double forks) is killed there and reaped, and
  the cgroup is removed before the next run. Runs of one worker never overlap, and a run
  can signal nothing but its own processes (other uid, other namespace).

The worker never receives expected outputs for a program: only code, stdin and limits (a
custom checker's stdin and a test-code run's test code hold expected values, but those are
trusted code's inputs, wiped from the worker's memory before the fork). It reports raw
facts (exit status, CPU time, peak memory, OOM kills, output); verdicts are decided by the
caller, outside of any untrusted process, except that a test-code run's test process
reports whether the test code ran to its end (testrun.py).
"""

import ctypes
import errno
import gc
import os
import select
import signal
import sys
import time

# Run as a script (-I leaves the script's directory off sys.path): the worker's modules
# sit beside it.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from filters import build_seccomp_filter, load_seccomp
from frames import read_frame, write_frame
from kernel import (
    CLONE_NEWPID,
    NOBODY,
    PR_SET_DUMPABLE,
    PR_SET_PDEATHSIG,
    _check,
    enter_user_namespace,
    libc,
    unshare,
)
from program import program_main
from rootfs import build_root, wipe_tmp
from runcg import Cgroups, NoCgroups, adopt_container_cgroups

WORKER_TASKS = 2
"""Tasks of the worker itself in its user namespace (PID 1 and the parent waiting for it):
the rlimit fallback's RLIMIT_NPROC counts them with the run's."""


def memfd(name, data=b"", sealable=False):
    fd = os.memfd_create(name, os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealable else 0))
    if data:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    return fd


def read_capped(fd, cap):
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while len(data) < cap:
        chunk = os.read(fd, min(1 << 20, cap - len(data)))
        if not chunk:
            break
        data += chunk
    size = os.fstat(fd).st_size
    return data, size


class Worker:
    def __init__(self, config):
        self.config = config
        self.userns = bool(config.get("userns"))
        self._statm = -1
        if config["cgroup"] is None:
            self.cgroups = NoCgroups()
            # Opened before the host's /proc goes out of sight: the worker's own size,
            # which a forked run starts with, taken off its rlimits and its peak.
            self._statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        else:
            self.cgroups = Cgroups(config["cgroup"])
        self.cgroups.remove()
        build_root(config["tmp_mb"], gvisor=config.get("gvisor", False))
        # The filter is loaded here, once, and inherited by every run: loading it per run
        # costs more than the fork.
        bpf = build_seccomp_filter()
        load_seccomp(ctypes.create_string_buffer(bpf, len(bpf)), len(bpf) // 8)

    def handle(self, header, blobs):
        op = header["op"]
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}, []
        if op == "run":
            return self.run(header, blobs)
        raise ValueError(f"unknown op {op!r}")

    def run(self, job, blobs):
        """Run one program. Blobs: [stdin] plus, for kind=exec with `files`, file contents,
        or, for a test-code run (mode=test), the test code."""
        lim = job["limits"]
        if self.config.get("gvisor"):
            # gVisor's pids cgroup lets a fork bomb past pids.max; RLIMIT_NPROC holds it,
            # counted in gVisor's own kernel, where only this run has the uid.
            lim["nproc"] = lim["pids"]
        stdin_fd = memfd("stdin", blobs[0] if blobs else b"")
        # A function-call run seals its stdout when the call fails (program.run_call).
        out_fd, err_fd = memfd("stdout", sealable=True), memfd("stderr")
        fds = [stdin_fd, out_fd, err_fd]
        try:
            if job.get("mode") == "test":
                fds.append(memfd("test", blobs[1]))  # fd 3 of the run (testrun.py)
            for i, (path, mode) in enumerate(job.get("files", [])):
                self._place(path, blobs[1 + i], mode)
            # Copied into memfds and files by now: wiped before the fork, so that no run
            # finds them in the memory it inherits. The test code of a test-code run, or
            # the expected output a custom checker reads on stdin, stays where it belongs.
            for blob in blobs:
                blob[:] = bytes(len(blob))
            facts = self._run_isolated(job, lim, tuple(fds))
            stdout, stdout_size = read_capped(out_fd, lim["output_bytes"])
            stderr, _ = read_capped(err_fd, lim.get("stderr_bytes", 8192))
            facts["stdout_size"] = stdout_size
            result_blobs = [stdout, stderr]
            capture = job.get("capture")
            if capture and facts["exit_code"] == 0:
                result_blobs.append(self._capture(capture, lim["fsize_bytes"]))
            return facts, result_blobs
        finally:
            for fd in fds:
                os.close(fd)
            wipe_tmp()

    def _place(self, path, data, mode):
        if not path.startswith("/tmp/") or "/.." in path:
            raise ValueError(f"file path must be under /tmp: {path!r}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            os.write(fd, data)
            os.fchown(fd, NOBODY, NOBODY)
        finally:
            os.close(fd)

    def _capture(self, path, cap):
        """Return a file the program produced (a compiled binary) for later runs."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if not _is_regular(fd):
                raise ValueError("artifact is not a regular file")
            data, _ = read_capped(fd, cap)
        finally:
            os.close(fd)
        return data

    def _own_size(self):
        """(virtual, resident) bytes of this process, as a run forked now starts with."""
        fields = os.pread(self._statm, 256, 0).split()
        page = os.sysconf("SC_PAGE_SIZE")
        return int(fields[0]) * page, int(fields[1]) * page

    def _run_isolated(self, job, lim, stdio_fds):
        if self.userns:
            job["keep_groups"] = True  # setgroups is denied in the worker's user namespace
        base_rss = 0
        if not self.cgroups.exact:
            # The fallback's limits, per process (program.set_limits): address space above
            # what the forked interpreter already has (an exec starts afresh), and tasks of
            # this user namespace, which holds only the worker and the run.
            vm, base_rss = self._own_size()
            own = vm if job["kind"] == "python" else 0
            lim["address_space_bytes"] = own + lim["memory_bytes"]
            lim["nproc"] = lim["pids"] + WORKER_TASKS
        cg_fds = self.cgroups.create(lim["memory_bytes"], lim["pids"])
        ready_r, ready_w = os.pipe()
        t0 = time.monotonic()
        try:
            pid = os.fork()
        except OSError:
            pid = -1
        if pid == 0:
            try:
                os.close(ready_r)
                program_main(job, cg_fds, stdio_fds, ready_w)
            finally:
                os._exit(75)
        for fd in cg_fds:
            os.close(fd)
        os.close(ready_w)
        if pid < 0:
            os.close(ready_r)
            raise OSError("fork failed")
        cpu_budget = lim["cpu_s"] + 0.05
        over = []
        watch = self.cgroups.memory_watch

        def over_budget():
            if watch and self.cgroups.watch_memory(lim["memory_bytes"]):
                over.append("memory")
            elif self.cgroups.exact and self.cgroups.cpu_s() > cpu_budget:
                over.append("cpu")
            return bool(over)

        checked = over_budget if watch or self.cgroups.exact else None
        exited = _wait_pid(pid, lim["wall_s"], checked, max_step=0.01 if watch else 0.1)
        timed_out = not exited and not over and time.monotonic() - t0 >= lim["wall_s"]
        if not exited:
            os.kill(pid, signal.SIGKILL)
        _, status, ru = os.wait4(pid, 0)
        wall = time.monotonic() - t0
        # Whatever the program left behind (daemons, double forks) is still in the run's
        # cgroup, which nothing unprivileged can leave: kill it there, then reap the
        # orphans that were re-parented to this process (PID 1 of the worker's namespace).
        clean = self.cgroups.kill_all()
        _reap_orphans()
        status_bytes = _read_all(ready_r)
        os.close(ready_r)
        ready = status_bytes.startswith(b"R")
        if watch:
            self.cgroups.watch_memory(lim["memory_bytes"])  # a last sample
        peak, ooms, cpu = self.cgroups.stats()
        if over == ["memory"]:
            ooms += 1  # killed by the memory watch: what the kernel's OOM kill means
        clean = self.cgroups.remove() and clean
        if not self.cgroups.exact:
            # The largest process's resident peak; a Python run's counts the interpreter
            # it was forked with, taken off here (an exec'd program's counts it until exec).
            maxrss = max(ru.ru_maxrss, self.cgroups.orphans_maxrss_kb) * 1024
            peak = max(0, maxrss - (base_rss if job["kind"] == "python" else 0))
        facts = {
            "wall_s": wall,
            "cpu_s": cpu,
            "peak_bytes": peak,
            "oom_kills": ooms,
            "wall_timeout": timed_out,
            "cpu_timeout": over == ["cpu"],
            "clean": clean,
            "memory_exact": self.cgroups.exact,
            "exit_code": None,
            "signal": None,
            "rusage_cpu_s": ru.ru_utime + ru.ru_stime,
            "maxrss_kb": ru.ru_maxrss,
        }
        if os.WIFSIGNALED(status):
            facts["signal"] = os.WTERMSIG(status)
        else:
            facts["exit_code"] = os.WEXITSTATUS(status)
        if not ready and exited and not ooms:
            facts["system_error"] = f"run setup failed (status {status})"
        elif status_bytes[1:2] == b"E":
            err = int(status_bytes[2:] or 0)
            facts["system_error"] = f"cannot execute {job['argv'][0]}: {os.strerror(err)}"
        elif status_bytes[1:2] == b"S":
            facts["syntax_error"] = True  # (said before any submitted code ran)
        return facts


def _reap_orphans():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _is_regular(fd):
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


def _read_all(fd):
    data = b""
    while chunk := os.read(fd, 1 << 20):
        data += chunk
    return data


def _wait_pid(pid, timeout, over_budget=None, max_step=0.1):
    """Wait for pid to exit; False when `timeout` passed or `over_budget()` said so first.

    Short runs are woken by the exit itself; longer ones are checked a few times a second
    (up to every `max_step` s). Without pidfds (gVisor) the exit is polled for too.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
        pidfd = -1
    try:
        if pidfd >= 0:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)

            def wait(seconds):
                return bool(poller.poll(seconds * 1000))
        else:

            def wait(seconds):
                end = time.monotonic() + seconds
                step = 0.0005
                while True:
                    if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                        return True
                    left = end - time.monotonic()
                    if left <= 0:
                        return False
                    time.sleep(min(step, left))
                    step = min(step * 2, 0.005)

        deadline = time.monotonic() + timeout
        step = min(0.02, max_step)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if wait(min(left, step)):
                return True
            if over_budget is not None and over_budget():
                return False
            step = min(step * 2, max_step)
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def become_pid1(channel_fds):
    """Continue as PID 1 of a new namespace, tied to the launching process.

    When the launcher dies (killed by the host, say), the kernel kills this process and with
    it every run still alive: nothing the worker started can outlive it.
    """
    unshare(CLONE_NEWPID)
    child = os.fork()
    if child:
        for fd in channel_fds:
            os.close(fd)
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    # (Should the launcher die before this line, the host still kills this process through
    # the worker's cgroup: it only kills the launcher when it tears the whole worker down.)
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")


def main():
    # Frames travel on private copies of stdin/stdout; fds 0-2 then point at /dev/null so
    # that nothing a run inherits by accident can reach the channel.
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    os.set_inheritable(rfd, False)
    os.set_inheritable(wfd, False)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # No handler at all: as PID 1 of its namespace the worker then gets no signal sent from
    # inside it. (Python's own SIGINT handler would let a run that shares its uid, in a
    # user namespace, interrupt it.)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        header, _ = read_frame(rfd)
        adopt_container_cgroups(header["cgroup"])
        userns = header.get("userns")
        if userns:
            enter_user_namespace(userns["uid"], userns["gid"])
        become_pid1((rfd, wfd))
        if userns:
            # Runs keep the worker's uid here: not dumpable, nothing of the same uid can
            # attach to it (ptrace is refused to runs by seccomp as well).
            _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")
        worker = Worker(header)
    except BaseException as e:
        write_frame(wfd, {"ok": False, "error": f"worker setup failed: {e!r}"})
        return 1
    write_frame(wfd, {"ok": True, "pid": os.getpid()})
    # What runs submitted code needs is imported now, once; freezing the heap keeps the
    # garbage collector of each forked run from touching (and copying) the worker's pages.
    import builtins  # noqa: F401

    compile("pass", "main.py", "exec")  # the first compile in a process is slow: pay it once
    gc.freeze()
    while True:
        try:
            header, blobs = read_frame(rfd, wipeable=True)
        except EOFError:
            worker.cgroups.remove()
            return 0
        try:
            reply, out_blobs = worker.handle(header, blobs)
        except Exception as e:
            reply, out_blobs = {"ok": False, "error": repr(e)}, []
        reply.setdefault("ok", True)
        write_frame(wfd, reply, out_blobs)


if __name__ == "__main__":
    sys.exit(main())
