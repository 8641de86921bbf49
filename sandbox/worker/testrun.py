"""Test-code runs: the test code in the run's process, the submission in a child it calls.

A test item's code (HumanEval's ``check(candidate)``, MBPP's asserts, one unittest method)
passes when it runs to its end without an exception. It cannot share a process with the
submission and stay honest: in one Python process the submission can reach and patch
every piece of Python the test relies on (builtins, ``unittest``, ``sys.modules``, the
test's own functions and classes through ``object.__subclasses__()`` and frame objects,
none of which Python audits), exit early, or print whatever the harness prints. So:

* the **test process** (this one, the run's main process) runs only the harness and the
  test code. It forks the **program process** first, before it reads the test code (which
  arrives on fd 3 and is never in the program's memory), then calls the program's
  top-level functions through proxies over a socket pair.
* values cross as plain data only (testwire.py), rebuilt as exact built-in types: nothing
  the program defines (a lying ``__eq__``, a subclass) ever reaches the test. An exception
  raised in the program is raised again in the test as its nearest built-in exception
  class, with plain arguments.
* the program process has no descriptor of the run's stdout (its fd 1 is a copy of
  stderr), and cannot take one from the test process: it is another process, not
  dumpable (it changed uid), and seccomp refuses ``ptrace``, ``process_vm_*`` and
  ``pidfd_getfd``. Only the test process writes ``PASS_MARKER`` there, after the test
  code returned, and the judge accepts nothing else as a pass.

Values cross as copies: a test that relies on the program changing its arguments in
place, passes callbacks, or gets objects back (generators, instances of the program's
classes) fails with a message saying so.
"""

import builtins
import io
import linecache
import os
import signal
import socket
import sys
import traceback
import types

# Imported once in the warm worker rather than in every run (about 10 ms for unittest).
import unittest

from testwire import (
    PASS_MARKER,
    TEST_ERROR,
    TEST_FAILED,
    ProgramFailed,
    decode,
    encode,
    receive,
    send,
)

TEST_CODE_FD = 3
"""Where the test process finds the test code (a memfd the program process closes)."""

MAX_TRACE = 2000
"""Characters of the program's traceback sent with an exception the test sees."""


# ------------------------------------------------------------------ the program process


def serve_program(code, sock):
    """Run the submission as main.py, then call its functions as the test process asks.

    Everything here runs alongside the submission and may be patched by it: it can only
    make its own answers wrong, since the test process decides on decoded copies.
    """
    sys.stdin = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8"
    )
    err = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", write_through=True)
    sys.stdout = sys.stderr = err
    sys.argv = ["main.py"]
    sys.path.insert(0, "/tmp")
    main = types.ModuleType("__main__")
    ns = main.__dict__
    ns["__builtins__"] = builtins
    ns["__file__"] = "/tmp/main.py"
    sys.modules["__main__"] = main
    linecache.cache["main.py"] = (len(code), None, code.splitlines(True), "main.py")
    try:
        exec(compile(code, "main.py", "exec"), ns)
        names = [k for k, v in list(ns.items()) if not k.startswith("__") and callable(v)]
        send(sock, {"ready": names})
    except BaseException as e:
        _print_error(err, e)
        os._exit(1)
    while True:
        message = receive(sock)
        if message is None:
            os._exit(0)
        name = message.get("call")
        try:
            args = decode(message["args"])
            kwargs = decode(message["kwargs"])
            fn = ns.get(name)
            if not callable(fn):
                raise NameError(f"name {name!r} is not defined")
            reply = {"value": encode(fn(*args, **kwargs), True)}
        except Exception as e:
            # Not printed here: the test may expect it (assertRaises). Its traceback
            # travels with it, and shows if the test does not catch it.
            reply = _raised(e)
        try:
            sys.stdout.flush()
        except Exception:
            pass
        send(sock, reply)


def _raised(exc):
    """The nearest built-in class of `exc`, its plain arguments and its traceback."""
    name = "Exception"
    for cls in type(exc).__mro__:
        if getattr(builtins, cls.__name__, None) is cls:
            name = cls.__name__
            break
    try:
        args = encode(list(exc.args), False)
    except (TypeError, ValueError):
        args = encode([str(exc)], False)
    return {"raised": name, "args": args, "trace": _format_error(exc)[-MAX_TRACE:]}


def _format_error(exc):
    """The traceback of main.py's or test.py's frames, as python3 would show it (the
    harness's own frames, a proxy's call among them, left out)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
        frames = [f for f in report.stack if os.path.dirname(f.filename) != here]
        report.stack = traceback.StackSummary.from_list(frames)
        return "".join(report.format())
    except BaseException:
        return ""


def _print_error(err, exc):
    try:
        err.write(_format_error(exc))
    except BaseException:
        pass


# ------------------------------------------------------------------ the test process


def run_test(job):
    """The run's main process: fork the program, then run the test code against it."""
    from program import CLEAN_ENV

    os.environ.clear()  # for both processes: the host's environment is no one's business
    os.environ.update(CLEAN_ENV)
    sock, program_sock = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        try:
            sock.close()
            os.close(TEST_CODE_FD)
            os.dup2(2, 1)  # the program's prints go to stderr; it never holds the run's stdout
            serve_program(job["code"], program_sock)
        finally:
            os._exit(1)
    program_sock.close()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    test_code = _read_fd(TEST_CODE_FD).decode("utf-8", "surrogatepass")
    os.close(TEST_CODE_FD)
    # Tracebacks show the test's lines, as they would for a file.
    linecache.cache["test.py"] = (len(test_code), None, test_code.splitlines(True), "test.py")
    err = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", write_through=True)
    sys.stdout = sys.stderr = err  # the test's own prints; fd 1 carries only the report
    sys.argv = ["test.py"]
    try:
        ready = receive(sock)
        if type(ready) is not dict or type(ready.get("ready")) is not list:
            raise ProgramFailed("the program ended before the test code could call it")
        method = job.get("test_method") or ""
        # A unittest item runs under another name, so that its `if __name__ ==
        # "__main__": unittest.main()` stays out of the way of the one method run here.
        module = types.ModuleType("__test__" if method else "__main__")
        sys.modules[module.__name__] = module  # for unittest's module fixtures
        ns = module.__dict__
        ns["__builtins__"] = builtins
        ns["__file__"] = "/tmp/test.py"
        for name in ready["ready"]:
            # A top-level name of the program that shadows a built-in (abs = lambda x: 0)
            # would change what the test code's own checks compute, a dunder name what
            # runs it (__builtins__): neither is exported.
            if (
                type(name) is str
                and name.isidentifier()
                and not name.startswith("__")
                and name not in builtins.__dict__
            ):
                ns[name] = _proxy(sock, name)
        exec(compile(test_code, "test.py", "exec"), ns)
        status = _run_unittest_method(module, method, err) if method else 0
        if status == 0 and os.write(1, PASS_MARKER) != len(PASS_MARKER):
            status = TEST_ERROR
    except AssertionError as e:
        status = TEST_FAILED
        _print_error(err, e)
    except BaseException as e:
        status = TEST_ERROR
        _print_error(err, e)
    _stop(pid)
    os._exit(status)


def _stop(pid):
    """End and reap the program process: the run's cgroup is empty when this one exits."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except OSError:
        pass


def _proxy(sock, name):
    def call(*args, **kwargs):
        try:
            message = {
                "call": name,
                "args": encode(list(args), False),
                "kwargs": encode(kwargs, False),
            }
        except TypeError as e:
            raise TypeError(
                f"{name}(): {e}; only plain data can be passed to the program"
            ) from None
        try:
            send(sock, message)
            reply = receive(sock)
        except OSError:  # the program's end of the socket closed (SIGPIPE is ignored here)
            reply = None
        if reply is None:
            raise ProgramFailed(f"the program ended during a call to {name}()")
        if type(reply) is not dict:
            raise ProgramFailed(f"the program broke the protocol during a call to {name}()")
        if "value" in reply:
            try:
                return decode(reply["value"])
            except (TypeError, ValueError) as e:
                raise ProgramFailed(f"{name}() returned a malformed value: {e}") from None
        raise _rebuilt(name, reply)

    call.__name__ = call.__qualname__ = name
    return call


def _rebuilt(name, reply):
    """The built-in exception the program raised, as a fresh object of this process."""
    cls = getattr(builtins, str(reply.get("raised")), None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = Exception
    try:
        args = decode(reply.get("args"))
        exc = cls(*args) if type(args) is list else cls()
    except (TypeError, ValueError):
        exc = cls()
    trace = reply.get("trace")
    where = f"(raised in the program by {name}()"
    exc.add_note(f"{where}:\n{trace.rstrip()})" if type(trace) is str and trace else f"{where})")
    return exc


def _run_unittest_method(module, method, err):
    """Run one test method through unittest's runner; 0, TEST_FAILED or TEST_ERROR."""
    suite = unittest.defaultTestLoader.loadTestsFromName(method, module)
    result = unittest.TestResult()
    suite.run(result)
    for _, text in result.errors + result.failures:
        err.write(text)
    if result.testsRun != 1 or result.errors or result.unexpectedSuccesses:
        if result.testsRun != 1:
            err.write(f"{method}: {result.testsRun} tests ran, expected 1\n")
        return TEST_ERROR
    if result.failures:
        return TEST_FAILED
    return 0


def _read_fd(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)
