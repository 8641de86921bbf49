"""The forked run: drop privileges, then run the submission (or exec a program).

Everything here runs in the child; nothing it does can reach the worker or the judge.
"""

import _json  # the C encoder of function-call results: no pure-Python fallback (see run_call)
import fcntl
import gc
import json
import os
import resource
import signal
import sys

from kernel import NOBODY, drop_bounding_capabilities, drop_capabilities
from testrun import run_test

WORKER_DIR = os.path.dirname(os.path.abspath(__file__))


def set_limits(lim):
    cpu = max(1, int(lim["cpu_s"]) + 1)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["fsize_bytes"], lim["fsize_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim.get("nofile", 64), lim.get("nofile", 64)))
    stack = lim.get("stack_bytes", lim["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_STACK, (stack, stack))
    # Only where no cgroup limits the run as a whole (the worker's rlimit fallback).
    if "address_space_bytes" in lim:
        space = lim["address_space_bytes"]
        resource.setrlimit(resource.RLIMIT_AS, (space, space))
    if "nproc" in lim:
        resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"], lim["nproc"]))


CLEAN_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}


def become_program(job, stdio_fds, ready_w):
    """Drop everything the program must not have, then say so on `ready_w` and close it."""
    os.setsid()
    for target, fd in enumerate(stdio_fds):
        os.dup2(fd, target, inheritable=True)
    os.chdir("/tmp")
    set_limits(job["limits"])
    os.umask(0o077)
    drop_bounding_capabilities()
    if not job.get("keep_groups"):
        os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    drop_capabilities()
    if job["kind"] != "python":
        # A Python process ignores these; an exec'd program must start with the defaults
        # (ignored dispositions survive execve).
        for signum in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(signum, signal.SIG_DFL)
    os.write(ready_w, b"R")
    if job["kind"] == "python" and job.get("report_syntax"):
        # Every worker fd but ready_w, which run_python closes once the submission has
        # compiled (or says it did not), before any of its code runs.
        os.closerange(len(stdio_fds), ready_w)
        os.closerange(ready_w + 1, 1 << 16)
    elif job["kind"] == "python":
        # ready_w and every worker fd: only 0-2 reach the program (and, for a test-code
        # run, the test code on fd 3, which the program's own process closes first).
        os.closerange(len(stdio_fds), 1 << 16)
    else:
        # ready_w stays open until the exec succeeds (close-on-exec), so that a failed exec
        # (a missing compiler, say) is reported as ours, not as the program's error.
        os.set_inheritable(ready_w, False)
        os.closerange(3, ready_w)
        os.closerange(ready_w + 1, 1 << 16)


def run_python(job, ready_w=None):
    """Execute the submission in this (sandboxed) process, as `python3 main.py` would.

    With `ready_w` (a run that checks the syntax itself, `report_syntax`), a source that
    does not compile is said there (`S`) and the run ends as a `syntax` run would; the fd
    is closed before any submitted code runs, so nothing the program does can say it."""
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
    compiled = None
    try:
        compiled = compile(code, "main.py", "exec")
    except BaseException as e:  # SyntaxError; ValueError (a NUL byte), RecursionError, ...
        if mode == "syntax" or ready_w is not None:
            if ready_w is not None:
                os.write(ready_w, b"S")
            err.write(f"{type(e).__name__}: {e}\n")
            os._exit(3)
        _print_exception(err, e)
        status = 1
    if ready_w is not None:
        os.close(ready_w)
    if compiled is not None:
        status = _execute(compiled, main, mode, job, err)
    if mode == "call":
        # The submission's threads are not waited for: the result is the returned value,
        # and they end with the process, as daemon threads do.
        os._exit(status & 0xFF)
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


def _execute(compiled, main, mode, job, err):
    """Run the compiled submission; its exit status."""
    status = 0
    try:
        if mode == "syntax":
            os._exit(0)
        if mode == "call":
            call_args = json.loads(sys.stdin.read())
            sys.stdout = sys.stderr  # the submission's prints must not mix with the result
            # run_call returns only when the run failed, once stdout is sealed: what the
            # failure runs from here on (tracebacks, exit codes) can no longer add a result.
            raise run_call(compiled, main.__dict__, job["fn_name"], call_args)
        exec(compiled, main.__dict__)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            status = e.code or 0
        else:
            err.write(f"{e.code}\n")
            status = 1
    except BaseException as e:
        _print_exception(err, e)
        status = 1
    return status


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


def _c_encoder(sort_keys):
    """json's C encoder, as json.dumps would make it (ASCII, ", " and ": ", NaN allowed).

    `default` is None: `to_plain` leaves nothing it would be asked about (and calling None
    raises). Building it now makes a worker whose Python lacks `_json` fail at start.
    """
    return _json.make_encoder(
        None,
        None,  # type: ignore[arg-type]
        _json.encode_basestring_ascii,
        None,
        ": ",
        ", ",
        sort_keys,
        False,
        True,
    )


_ENCODER, _BY_TEXT = _c_encoder(False), _c_encoder(True)
_SEALED = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


def run_call(
    compiled,
    ns,
    fn_name,
    call_args,
    *,
    # The submission can replace anything reachable from Python: module attributes (json,
    # os, sys, threading, traceback), builtins, this module's globals, the code and
    # defaults of any function that exists while it runs. So everything used here once
    # submitted code has started is bound below, when this module is imported, and is
    # copied into this frame's fast locals (which Python code cannot rebind) when the call
    # starts: C functions and exact built-in types only, whose behaviour no Python code can
    # change. The C encoder is called through its type's own slot wrapper: the type of
    # `_json.Encoder` objects accepts a new `__call__`.
    _write=os.write,
    _exit=os._exit,
    _fstat=os.fstat,
    _field=tuple.__getitem__,
    _fcntl=fcntl.fcntl,
    _add_seals=fcntl.F_ADD_SEALS,
    _sealed=_SEALED,
    _gc_disable=gc.disable,
    _callable=callable,
    _getattr=getattr,
    _isinstance=isinstance,
    _type=type,
    _sorted=sorted,
    _join="".join,
    _ascii=str.encode,
    _name_of=type.__dict__["__name__"].__get__,
    _encode=_json.make_encoder.__dict__["__call__"],
    _encoder=_ENCODER,
    _by_text=_BY_TEXT,
    _BaseException=BaseException,
    _NameError=NameError,
    _TypeError=TypeError,
    _ValueError=ValueError,
    _str=str,
    _int=int,
    _float=float,
    _bool=bool,
    _none=None.__class__,
    _list=list,
    _tuple=tuple,
    _dict=dict,
    _set=set,
    _frozenset=frozenset,
):
    """Run main.py, call its function and write the result to fd 1 as the last line of
    stdout, then exit 0 at once: the submission's threads are not waited for, they end
    with the process. If anything fails instead, seal stdout and return the exception.

    Once the function has returned nothing the submission could have changed runs before
    the exit: the result is normalised and encoded by code created after the call, from
    the references above, and written with os.write after a newline (so that nothing
    written before can merge into it). Stdout belongs to the harness in this mode (the
    submission's prints go to stderr). What this cannot stop, see docs/sandbox.md: code
    the submission leaves running while this runs (threads, child processes, signal
    handlers, trace, profile and audit hooks), and ctypes.
    """
    st = os.fstat(1)
    stdout_id = (st.st_ino, st.st_dev)
    missing = f"function {fn_name!r} is not defined"
    try:
        exec(compiled, ns)
        fn = ns.get(fn_name)
        solution = ns.get("Solution")
        if fn is None and _isinstance(solution, _type):
            fn = _getattr(solution(), fn_name, None)
        if not _callable(fn):
            raise _NameError(missing)
        result = fn(*call_args["args"], **call_args["kwargs"])
        _gc_disable()  # a collection could run finalisers the submission left behind

        # Created now, so that the submission never had it to change. Exact types only: a
        # subclass (a list whose __eq__ or __iter__ lies) is refused, never called.
        def to_plain(
            v,
            depth,
            again,
            *,
            type=_type,
            sorted=_sorted,
            join=_join,
            name_of=_name_of,
            encode=_encode,
            encoder=_encoder,
            by_text=_by_text,
            TypeError=_TypeError,
            ValueError=_ValueError,
            str=_str,
            int=_int,
            float=_float,
            bool=_bool,
            none=_none,
            list=_list,
            tuple=_tuple,
            dict=_dict,
            set=_set,
            frozenset=_frozenset,
        ):
            if depth > 100:
                raise ValueError("result nested too deeply")
            t = type(v)
            if t is str or t is int or t is float or t is bool or t is none:
                return v
            if t is list or t is tuple:
                return [again(x, depth + 1, again) for x in v]
            if t is dict:
                plain = {}
                for k, x in v.items():
                    tk = type(k)
                    if tk is not str:
                        if not (tk is int or tk is float or tk is bool or tk is none):
                            raise TypeError(join(("dict key of type ", name_of(tk))))
                        k = join(encode(encoder, k, 0))  # as json.dumps(k)
                    plain[k] = again(x, depth + 1, again)
                return plain
            if t is set or t is frozenset:
                items = [again(x, depth + 1, again) for x in v]
                # In the order of their JSON text, as json.dumps(x, sort_keys=True).
                return sorted(items, key=lambda x: join(encode(by_text, x, 0)))
            raise TypeError(join(("result of type ", name_of(t), " is not JSON-serialisable")))

        text = _join(_encode(_encoder, to_plain(result, 0, to_plain), 0))
        data = b"\n" + _ascii(text, "ascii") + b"\n"
        while data:
            data = data[_write(1, data) :]
        _exit(0)
    except _BaseException as e:
        failure = e
    # The run failed: seal stdout (a memfd) before anything looked up at run time reports
    # it, so that nothing can be added to it, through any descriptor. When fd 1 is not
    # the stdout the run started with, or cannot be sealed, only say so.
    try:
        st = _fstat(1)
        if (_field(st, 1), _field(st, 2)) == stdout_id:
            _fcntl(1, _add_seals, _sealed)
            return failure
    except _BaseException:
        pass
    try:
        _write(2, b"sandbox: the program replaced its stdout; its error is not shown\n")
    finally:
        _exit(1)


def run_exec(job, ready_w):
    try:
        env = dict(CLEAN_ENV)
        env.update(job.get("env", ()))
        os.execve(job["argv"][0], job["argv"], env)
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
    if job["kind"] == "python" and job["mode"] == "test":
        run_test(job)
    elif job["kind"] == "python":
        run_python(job, ready_w if job.get("report_syntax") else None)
    else:
        run_exec(job, ready_w)
    os._exit(73)
