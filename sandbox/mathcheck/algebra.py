"""Algebra in child processes, each request bounded in time from any thread.

A request borrows an idle child, sends it the pair and waits until the child has spent its
CPU-time budget on it (or a wall-time cap passed: a starved or stalled child); a child that
overruns is killed and a ready standby takes its place at once, while a new
standby starts in the background: starting a child takes seconds (sympy's imports), and
without the standby the checks after a timeout would wait for it. No signals are
used (``signal.alarm`` only works in the main thread), so this works from any thread or
event loop. The budget is CPU time, not wall time, so that a loaded host (the sandbox's own
runs beside it, a fork bomb among them) does not turn a right answer that needs a second of
algebra into a timeout: the verdict is the same on a quiet host and a busy one. Where the
child's CPU time cannot be read (no /proc), its wall time stands in. Children are fresh
interpreters (``python -m ...algebra_child``), never forks of
the caller, which is what makes them safe to start from threaded and asyncio servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

READY_TIMEOUT_S = 60.0
"""How long a new child may take to import sympy and say ready."""

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
_MIN_WAIT_S = 0.01
"""The shortest wait between two readings of a child's CPU time (its clock's resolution)."""


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a live process has spent; None where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its end.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return (int(fields[11]) + int(fields[12])) * _TICK_S
    except (IndexError, ValueError):
        return None


class AlgebraStartError(RuntimeError):
    """A child could not start (a missing dependency, say); the message says why."""


def _package_root() -> str:
    """The directory holding the ``rlfleet`` package, so children import the same code."""
    import rlfleet

    return str(Path(rlfleet.__file__).resolve().parent.parent)


class _Child:
    def __init__(self, memory_mb: int) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by kill())
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_package_root(), env.get("PYTHONPATH", "")) if p
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rlfleet.sandbox.mathcheck.algebra_child", str(memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # A file, not a pipe: nobody reads it while the child runs; it says why a child
            # failed to start.
            stderr=self._stderr,
            env=env,
            # Its own session: a Ctrl-C meant for the caller's terminal does not reach it.
            start_new_session=True,
        )
        self._buffer = b""
        self._kill_lock = threading.Lock()
        self._killed = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, answer: str, gold: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps([answer, gold]) + "\n").encode())
        self.process.stdin.flush()

    def receive(self, timeout: float) -> list[Any] | None:
        """The next reply, or None when none came in time. Raises EOFError if it died."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("algebra child exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        reply = json.loads(line)
        return reply if isinstance(reply, list) else None

    def failure(self) -> str:
        """Why the child did not start: the last line it wrote on stderr, if any."""
        self._stderr.seek(0)
        lines = self._stderr.read()[-4096:].decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else f"it exited with status {self.process.poll()}"

    def kill(self, *, reap: bool = True) -> None:
        """Kill the child and close its files, once: ``close`` and a restarting thread may
        both come here for the same child (closing a file twice at once raises). With
        ``reap=False`` only the signal is sent here; waiting for the child to end and
        closing its files happen in a thread, off the caller's time."""
        with self._kill_lock:
            if self._killed:
                return
            self._killed = True
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        if reap:
            self._reap()
        else:
            threading.Thread(target=self._reap, daemon=True, name="mathcheck-reap").start()

    def _reap(self) -> None:
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                if pipe:
                    pipe.close()
        self._stderr.close()


class AlgebraRunner:
    """A fixed number of child processes doing checks, and one standby; ``check`` is
    thread-safe."""

    def __init__(self, processes: int, *, memory_mb: int, max_wait_s: float) -> None:
        self._memory_mb = memory_mb
        self._max_wait_s = max_wait_s
        self._idle: queue.Queue[_Child] = queue.Queue()
        self._all: set[_Child] = set()
        self._active: set[_Child] = set()
        """The children doing checks (idle or busy); not the standby, nor one starting."""
        self._standby: list[_Child] = []
        """At most one ready child, waiting to replace one that is killed."""
        self._vacant = 0
        """Places of killed children that no standby could take: a new child goes there
        first."""
        self._starters: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0
        started = [self._spawn() for _ in range(processes)]
        for w in started:
            if w is None or not self._await_ready(w):
                reason = w.failure() if w else "closed while starting"
                self.close()
                raise AlgebraStartError(_start_error(reason))
            self._active.add(w)
            self._idle.put(w)
        self._replace()  # the standby, started in the background

    def _spawn(self) -> _Child | None:
        # Spawned under the lock that close() takes: a child either exists in _all when
        # close() runs (and is killed) or is never started.
        with self._lock:
            if self._closed:
                return None
            w = _Child(self._memory_mb)
            self._all.add(w)
            return w

    def _await_ready(self, w: _Child) -> bool:
        try:
            return w.receive(READY_TIMEOUT_S) == ["ready", None]
        except (EOFError, OSError, ValueError):
            return False

    def _discard(self, w: _Child, *, reap: bool = True) -> None:
        with self._lock:
            self._all.discard(w)
            self._active.discard(w)
        w.kill(reap=reap)

    def _take_place(self, w: _Child) -> bool:
        """Put a child that just became ready where it is needed: a vacant place, else the
        standby; False when neither needs it (or the runner closed). Call under the lock."""
        if self._closed:
            return False
        if self._vacant > 0:
            self._vacant -= 1
            self._active.add(w)
            self._idle.put(w)
            return True
        if not self._standby:
            self._standby.append(w)
            return True
        return False

    def _replace(self) -> None:
        def start() -> None:
            try:
                w = self._spawn()
                if w is None:
                    return
                if not self._await_ready(w):
                    self._discard(w)
                    return
                with self._lock:
                    if self._take_place(w):
                        return
                self._discard(w)
            finally:
                with self._lock:
                    self._starters.discard(threading.current_thread())

        thread = threading.Thread(target=start, daemon=True, name="mathcheck-restart")
        with self._lock:
            if self._closed:
                return
            self._starters.add(thread)
        thread.start()

    def check(self, answer: str, gold: str, cpu_s: float, wall_s: float) -> tuple[str, Any, float]:
        """(status, value, CPU seconds spent): ("ok", bool), ("error", message), ("fault",
        message) or ("timeout", None).

        Waits up to ``max_wait_s`` for an idle child (not counted in the budgets), then
        gives the child ``cpu_s`` seconds of CPU time, and at most ``wall_s`` of wall time
        however little CPU it got.
        """
        if self._closed:
            raise RuntimeError("math checker is closed")
        try:
            w = self._idle.get(timeout=self._max_wait_s)
        except queue.Empty:
            return ("timeout", None, 0.0)
        start = time.monotonic()
        cpu_start = cpu_seconds(w.pid)

        def spent_now() -> float:
            now = cpu_seconds(w.pid) if cpu_start is not None else None
            return time.monotonic() - start if cpu_start is None or now is None else now - cpu_start

        spent = 0.0
        try:
            w.send(answer, gold)
            while True:
                spent = spent_now()
                # A child cannot spend CPU faster than the clock runs: waiting for what is
                # left of its CPU budget never waits past the point it could have overrun.
                left = min(cpu_s - spent, wall_s - (time.monotonic() - start))
                if left <= 0:
                    break
                reply = w.receive(max(left, _MIN_WAIT_S))
                if reply is not None:
                    if len(reply) != 2:
                        break
                    spent = spent_now()
                    self._idle.put(w)
                    return (str(reply[0]), reply[1], spent)
        except (EOFError, OSError, ValueError):
            pass
        # Overran (or died): kill it; the standby takes its place, and a new child starts in
        # the background (the next standby, or this place when there was no standby).
        self._discard(w, reap=False)  # the check returns now; the child ends in a thread
        self.restarts += 1
        with self._lock:
            if self._standby:
                standby = self._standby.pop()
                self._active.add(standby)
                self._idle.put(standby)
            else:
                self._vacant += 1
        self._replace()
        return ("timeout", None, spent)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            children = list(self._all)
            self._all.clear()
            self._active.clear()
            self._standby.clear()
            starters = list(self._starters)
        for w in children:
            w.kill()
        for t in starters:
            t.join(READY_TIMEOUT_S)

    def pids(self) -> list[int]:
        """The children doing checks (not the standby)."""
        with self._lock:
            return [w.pid for w in self._active]

    def standby_pids(self) -> list[int]:
        """The ready standby, if there is one now."""
        with self._lock:
            return [w.pid for w in self._standby]


def _start_error(reason: str) -> str:
    if reason.startswith("ModuleNotFoundError") or reason.startswith("ImportError"):
        return (
            f"the math checker cannot start: {reason}; a runtime dependency of rlfleet is "
            "missing (reinstall rlfleet with its dependencies: pip install rlfleet)"
        )
    return f"the math checker cannot start: {reason}"
