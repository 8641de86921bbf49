"""The forked run: drop privileges, then run the submission (or exec a program).

Everything here runs in the child; nothing it does can reach the worker or the judge.
"""

import json
import os
import resource
import signal
import sys

from kernel import NOBODY

WORKER_DIR = os.path.dirname(os.path.abspath(__file__))


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
    if job["kind"] == "python":
        os.closerange(3, 1 << 16)  # ready_w and every worker fd: only 0-2 reach the program
    else:
        # ready_w stays open until the exec succeeds (close-on-exec), so that a failed exec
        # (a missing compiler, say) is reported as ours, not as the program's error.
        os.set_inheritable(ready_w, False)
        os.closerange(3, ready_w)
        os.closerange(ready_w + 1, 1 << 16)


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
    while tb is not None and os.path.dirname(tb.tb_frame.f_code.co_filename) == WORKER_DIR:
        tb = tb.tb_next
    try:
        err.write("".join(traceback.format_exception(type(exc), exc, tb)))
    except BaseException:
        pass


_JSON_SCALARS = (str, int, float, bool, type(None))
# Bound now, before any submission runs: patching builtins or json does not reach these.

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


def run_exec(job, ready_w):
    try:
        os.execve(job["argv"][0], job["argv"], CLEAN_ENV)
    except OSError as e:
        os.write(ready_w, f"E{e.errno}".encode())
        os._exit(73)


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
        run_exec(job, ready_w)
    os._exit(73)
