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

The worker never receives expected outputs: only code, stdin and limits. It reports raw
facts (exit status, CPU time, peak memory, OOM kills, output); verdicts are decided by the
caller, outside of any untrusted process.
"""

import ctypes
import errno
import gc
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import time

NOBODY = 65534
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWCGROUP = 0x02000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_MOVE = 8192
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_SET_PDEATHSIG = 1
SECCOMP_MODE_FILTER = 2
FRAME = struct.Struct(">I")
MAX_FRAME = 1 << 30

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags):
    _check(libc.unshare(ctypes.c_int(flags)), "unshare")


def syscall_number(name):
    """The native number of a syscall, from libseccomp's tables (no per-arch constants)."""
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:
        raise OSError(errno.ENOSYS, f"unknown syscall {name}")
    return nr


def mount(source, target, fstype, flags=0, data=None):
    _check(
        libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


# ---------------------------------------------------------------------------- framing


def read_exact(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd):
    """One frame: u32 header length, JSON header, then the blobs it lists by size."""
    (size,) = FRAME.unpack(read_exact(fd, FRAME.size))
    if size > MAX_FRAME:
        raise ValueError("frame too large")
    header = json.loads(read_exact(fd, size))
    blobs = [read_exact(fd, n) for n in header.pop("_blobs", [])]
    return header, blobs


def write_frame(fd, header, blobs=()):
    header = dict(header, _blobs=[len(b) for b in blobs])
    data = json.dumps(header).encode()
    payload = b"".join([FRAME.pack(len(data)), data, *blobs])
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view) :]


# ---------------------------------------------------------------------------- seccomp

# Denied with EPERM: kernel surfaces a judged program never needs, and every way to make
# namespaces, mounts or to reach other processes' memory.
DENIED_SYSCALLS = [
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "mount",
    "umount2",
    "pivot_root",
    "unshare",
    "setns",
    "chroot",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "name_to_handle_at",
    "open_by_handle_at",
    "quotactl",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "fanotify_init",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "ioperm",
    "iopl",
    "syslog",
    "uselib",
    "personality",
    "vhangup",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "migrate_pages",
    "move_pages",
    "lookup_dcookie",
]


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def build_seccomp_filter():
    """Compile the filter once with libseccomp; each run loads the ready BPF with prctl."""
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ScmpArgCmp),
    ]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    cmp_ne, cmp_masked_eq = 1, 7
    ctx = lib.seccomp_init(allow)
    if not ctx:
        raise OSError("seccomp_init failed")

    def rule(action, name, *cmps):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return
        arr = (ScmpArgCmp * max(1, len(cmps)))(*cmps)
        ret = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
        if ret != 0:
            raise OSError(-ret, f"seccomp rule {name}")

    try:
        for name in DENIED_SYSCALLS:
            rule(eperm, name)
        # Sockets: AF_UNIX only (socketpair for multiprocessing); no network families.
        rule(eperm, "socket", ScmpArgCmp(0, cmp_ne, 1, 0))
        # clone3 hides its flags in memory: refuse it so libc falls back to clone, whose
        # flags can be filtered for namespace creation.
        rule(enosys, "clone3")
        for flag in (
            CLONE_NEWUSER,
            CLONE_NEWNS,
            CLONE_NEWNET,
            CLONE_NEWPID,
            CLONE_NEWCGROUP,
            CLONE_NEWIPC,
            CLONE_NEWUTS,
        ):
            rule(eperm, "clone", ScmpArgCmp(0, cmp_masked_eq, flag, flag))
        rfd, wfd = os.pipe()
        ret = lib.seccomp_export_bpf(ctx, wfd)
        os.close(wfd)
        if ret != 0:
            raise OSError(-ret, "seccomp_export_bpf")
        bpf = b""
        while chunk := os.read(rfd, 65536):
            bpf += chunk
        os.close(rfd)
        return bpf
    finally:
        lib.seccomp_release(ctx)


def load_seccomp(bpf_buf, n_insns):
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    prog = SockFprog(n_insns, ctypes.addressof(bpf_buf))
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


# ---------------------------------------------------------------------------- cgroups


class Cgroups:
    """Per-run cgroups under a base the worker owns; v1 (one dir per controller) or v2."""

    def __init__(self, spec):
        self.version = spec["version"]
        paths = [spec["path"]] if self.version == 2 else list(spec["paths"].values())
        if spec.get("remount"):
            # Inside a container the cgroup mounts are read-only views of its own cgroups.
            for path in paths:
                mount(None, path, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        if spec.get("nested"):
            _make_root_delegable(spec["path"])
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
    with open(os.path.join(path, "cgroup.subtree_control"), "w") as f:
        f.write("+memory +pids +cpu")


# ---------------------------------------------------------------------------- filesystem


def build_root(tmp_mb):
    """Enter private namespaces and pivot into a minimal read-only root with a tmpfs /tmp."""
    unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Build the new root on a tmpfs mounted over /tmp: only this mount namespace sees it.
    new = "/tmp"
    mount("rlfleet-root", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=755")
    os.mkdir(f"{new}/usr")
    mount("/usr", f"{new}/usr", None, MS_BIND | MS_REC)
    mount(None, f"{new}/usr", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    if os.path.isdir("/usr/local"):
        mount(
            "rlfleet-empty",
            f"{new}/usr/local",
            "tmpfs",
            MS_RDONLY | MS_NOSUID | MS_NODEV,
            "size=4k",
        )
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = f"/{name}"
        if os.path.islink(path):
            os.symlink(os.readlink(path), f"{new}/{name}")
        elif os.path.isdir(path):
            os.mkdir(f"{new}/{name}")
            mount(path, f"{new}/{name}", None, MS_BIND | MS_REC)
            mount(
                None, f"{new}/{name}", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
            )
    os.mkdir(f"{new}/etc")
    files = {
        "passwd": "root:x:0:0:root:/root:/bin/false\nnobody:x:65534:65534:nobody:/tmp:/bin/false\n",
        "group": "root:x:0:\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1 localhost\n",
        "hostname": "sandbox\n",
    }
    for name, text in files.items():
        with open(f"{new}/etc/{name}", "w") as f:
            f.write(text)
    for name in ("ld.so.cache", "ld.so.conf", "localtime"):
        if os.path.isfile(f"/etc/{name}"):
            shutil.copyfile(f"/etc/{name}", f"{new}/etc/{name}")
    if os.path.isdir("/etc/alternatives"):
        os.mkdir(f"{new}/etc/alternatives")
        for name in os.listdir("/etc/alternatives"):
            target = os.path.join("/etc/alternatives", name)
            if os.path.islink(target):
                os.symlink(os.readlink(target), f"{new}/etc/alternatives/{name}")
    os.mkdir(f"{new}/dev")
    for name in ("null", "zero", "full", "random", "urandom"):
        open(f"{new}/dev/{name}", "w").close()
        mount(f"/dev/{name}", f"{new}/dev/{name}", None, MS_BIND)
    os.symlink("/proc/self/fd", f"{new}/dev/fd")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{new}/dev/{name}")
    os.mkdir(f"{new}/tmp")
    mount("rlfleet-tmp", f"{new}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_mb}m,mode=1777")
    os.mkdir(f"{new}/.old")
    os.chdir(new)
    if libc.syscall(syscall_number("pivot_root"), b".", b".old") == 0:
        os.chdir("/")
        _check(libc.umount2(b"/.old", MNT_DETACH), "umount old root")
        os.rmdir("/.old")
    elif ctypes.get_errno() == errno.EPERM:
        # Docker's default seccomp profile refuses pivot_root: move the new root over the
        # old one instead (covering it) and chroot into it. Programs lack CAP_SYS_CHROOT.
        os.rmdir(".old")
        mount(new, "/", None, MS_MOVE)
        os.chroot(".")
        os.chdir("/")
    else:
        _check(-1, "pivot_root")
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    libc.sethostname(b"sandbox", 7)


def wipe_tmp():
    for name in os.listdir("/tmp"):
        path = os.path.join("/tmp", name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


# ---------------------------------------------------------------------------- running


def memfd(name, data=b""):
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
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


def set_limits(lim):
    cpu = max(1, int(lim["cpu_s"]) + 1)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["fsize_bytes"], lim["fsize_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim.get("nofile", 64), lim.get("nofile", 64)))
    stack = lim.get("stack_bytes", lim["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_STACK, (stack, stack))


CLEAN_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}


def become_program(job, stdio_fds, ready_w):
    """Drop everything the program must not have, then say so on `ready_w` and close it."""
    os.setsid()
    for target, fd in enumerate(stdio_fds):
        os.dup2(fd, target, inheritable=True)
    os.chdir("/tmp")
    set_limits(job["limits"])
    os.umask(0o077)
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    if job["kind"] != "python":
        # A Python process ignores these; an exec'd program must start with the defaults
        # (ignored dispositions survive execve).
        for signum in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(signum, signal.SIG_DFL)
    os.write(ready_w, b"R")
    os.closerange(3, 1 << 16)  # ready_w and every worker fd: only 0-2 reach the program


def run_python(job):
    """Execute the submission in this (sandboxed) process, as `python3 main.py` would."""
    import builtins
    import io
    import types

    os.environ.clear()
    os.environ.update(CLEAN_ENV)
    sys.stdin = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8"
    )
    out = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8")
    err = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", write_through=True)
    sys.stdout, sys.stderr = out, err
    sys.argv = ["main.py"]
    sys.path.insert(0, "/tmp")
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    main.__dict__["__file__"] = "/tmp/main.py"
    sys.modules["__main__"] = main
    code = job["code"]
    mode = job["mode"]
    status = 0
    try:
        compiled = compile(code, "main.py", "exec")
        if mode == "syntax":
            os._exit(0)
        if mode == "call":
            call_args = json.loads(sys.stdin.read())
            sys.stdout = sys.stderr  # the submission's prints must not mix with the result
        exec(compiled, main.__dict__)
        if mode == "call":
            fn = main.__dict__.get(job["fn_name"])
            solution = main.__dict__.get("Solution")
            if fn is None and isinstance(solution, type):
                fn = getattr(solution(), job["fn_name"], None)
            if not callable(fn):
                raise NameError(f"function {job['fn_name']!r} is not defined")
            result = fn(*call_args["args"], **call_args["kwargs"])
            out.write(to_json(result))
    except SyntaxError as e:
        if mode == "syntax":
            err.write(f"{type(e).__name__}: {e}\n")
            os._exit(3)
        _print_exception(err, e)
        status = 1
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            status = e.code or 0
        else:
            err.write(f"{e.code}\n")
            status = 1
    except BaseException as e:
        _print_exception(err, e)
        status = 1
    try:
        import threading

        # As at interpreter exit: wait for non-daemon threads (only when there are some).
        if threading._shutdown_locks:  # type: ignore[attr-defined]
            threading._shutdown()  # type: ignore[attr-defined]
        sys.stdout.flush()
        out.flush()
    except BaseException:
        status = status or 120
    os._exit(status & 0xFF)


def _print_exception(err, exc):
    import traceback

    tb = exc.__traceback__
    # Drop the worker's own frames: the traceback starts in main.py, as under python3.
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    try:
        err.write("".join(traceback.format_exception(type(exc), exc, tb)))
    except BaseException:
        pass


_JSON_SCALARS = (str, int, float, bool, type(None))
# Bound now, before any submission runs: patching builtins or json does not reach these.
_type, _sorted, _dumps = type, sorted, json.dumps


def to_json(value):
    """Serialise exact built-in types only: subclasses (a list whose __eq__ lies) are refused.

    Whatever the submission patches, the comparison happens in the judge's process against
    an expected value this process never had: a forged result can only be wrong.
    """
    type, sorted, dumps = _type, _sorted, _dumps

    def norm(v, depth=0):
        if depth > 100:
            raise ValueError("result nested too deeply")
        t = type(v)
        if t in _JSON_SCALARS:
            return v
        if t is list or t is tuple:
            return [norm(x, depth + 1) for x in v]
        if t is dict:
            return {_key(k): norm(x, depth + 1) for k, x in v.items()}
        if t is set or t is frozenset:
            items = [norm(x, depth + 1) for x in v]
            return sorted(items, key=lambda x: dumps(x, sort_keys=True))
        raise TypeError(f"result of type {t.__name__} is not JSON-serialisable")

    def _key(k):
        if type(k) is str:
            return k
        if type(k) in (int, float, bool) or k is None:
            return dumps(k)
        raise TypeError(f"dict key of type {type(k).__name__}")

    return dumps(norm(value), allow_nan=True) + "\n"


def run_exec(job):
    os.execve(job["argv"][0], job["argv"], CLEAN_ENV)


def program_main(job, cg_fds, stdio_fds, ready_w):
    """The forked run: join the run's cgroups, drop privileges, run the submission."""
    try:
        for fd in cg_fds:
            os.write(fd, b"0")
            os.close(fd)
        become_program(job, stdio_fds, ready_w)
    except BaseException as e:  # setup failed before any submitted code ran: ours (SE)
        try:
            os.write(2, f"sandbox setup failed: {e!r}\n".encode())
        finally:
            os._exit(72)
    if job["kind"] == "python":
        run_python(job)
    else:
        run_exec(job)
    os._exit(73)


class Worker:
    def __init__(self, config):
        self.config = config
        self.cgroups = Cgroups(config["cgroup"])
        self.cgroups.remove()
        build_root(config["tmp_mb"])
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
        """Run one program. Blobs: [stdin] plus, for kind=exec with `files`, file contents."""
        lim = job["limits"]
        stdin_fd = memfd("stdin", blobs[0] if blobs else b"")
        out_fd, err_fd = memfd("stdout"), memfd("stderr")
        try:
            for i, (path, mode) in enumerate(job.get("files", [])):
                self._place(path, blobs[1 + i], mode)
            facts = self._run_isolated(job, lim, (stdin_fd, out_fd, err_fd))
            stdout, stdout_size = read_capped(out_fd, lim["output_bytes"])
            stderr, _ = read_capped(err_fd, lim.get("stderr_bytes", 8192))
            facts["stdout_size"] = stdout_size
            result_blobs = [stdout, stderr]
            capture = job.get("capture")
            if capture and facts["exit_code"] == 0:
                result_blobs.append(self._capture(capture, lim["fsize_bytes"]))
            return facts, result_blobs
        finally:
            for fd in (stdin_fd, out_fd, err_fd):
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

    def _run_isolated(self, job, lim, stdio_fds):
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
        exited = _wait_pid(pid, lim["wall_s"], lambda: self.cgroups.cpu_s() > cpu_budget)
        timed_out = not exited and time.monotonic() - t0 >= lim["wall_s"]
        if not exited:
            os.kill(pid, signal.SIGKILL)
        _, status, ru = os.wait4(pid, 0)
        wall = time.monotonic() - t0
        # Whatever the program left behind (daemons, double forks) is still in the run's
        # cgroup, which nothing unprivileged can leave: kill it there, then reap the
        # orphans that were re-parented to this process (PID 1 of the worker's namespace).
        clean = self.cgroups.kill_all()
        _reap_orphans()
        ready = os.read(ready_r, 1) == b"R"
        os.close(ready_r)
        peak, ooms, cpu = self.cgroups.stats()
        clean = self.cgroups.remove() and clean
        facts = {
            "wall_s": wall,
            "cpu_s": cpu,
            "peak_bytes": peak,
            "oom_kills": ooms,
            "wall_timeout": timed_out,
            "cpu_timeout": not exited and not timed_out,
            "clean": clean,
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


def _wait_pid(pid, timeout, over_budget=None):
    """Wait for pid to exit; False when `timeout` passed or `over_budget()` said so first.

    Short runs are woken by the exit itself; longer ones are checked a few times a second.
    """
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        deadline = time.monotonic() + timeout
        step = 0.02
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if poller.poll(min(left, step) * 1000):
                return True
            if over_budget is not None and over_budget():
                return False
            step = min(step * 2, 0.1)
    finally:
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
    try:
        header, _ = read_frame(rfd)
        become_pid1((rfd, wfd))
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
            header, blobs = read_frame(rfd)
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
