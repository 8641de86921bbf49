"""Worker processes for algebra, each request bounded in wall time from any thread.

A request borrows an idle worker, sends it the pair and waits at most its time budget; a
worker that overruns is killed and a replacement started in the background. No signals are
used (``signal.alarm`` only works in the main thread), so this works from any thread or
event loop. Workers are fresh interpreters (``python -m ...worker``), never forks of the
caller, which is what makes them safe to start from threaded and asyncio servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

READY_TIMEOUT_S = 60.0
"""How long a new worker may take to import sympy and say ready."""


def _package_root() -> str:
    """The directory holding the ``rlfleet`` package, so workers import the same code."""
    import rlfleet

    return str(Path(rlfleet.__file__).resolve().parent.parent)


class _Worker:
    def __init__(self, memory_mb: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_package_root(), env.get("PYTHONPATH", "")) if p
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rlfleet.sandbox.mathcheck.worker", str(memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            # Its own session: a Ctrl-C meant for the caller's terminal does not reach it.
            start_new_session=True,
        )
        self._buffer = b""

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
                raise EOFError("math worker exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        reply = json.loads(line)
        return reply if isinstance(reply, list) else None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                if pipe:
                    pipe.close()


class AlgebraPool:
    """A fixed number of workers; ``check`` is thread-safe."""

    def __init__(self, workers: int, *, memory_mb: int, max_wait_s: float) -> None:
        self._memory_mb = memory_mb
        self._max_wait_s = max_wait_s
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: set[_Worker] = set()
        self._starters: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0
        started = [self._spawn() for _ in range(workers)]
        for w in started:
            if w is None or not self._await_ready(w):
                self.close()
                raise RuntimeError("math worker did not start")
            self._idle.put(w)

    def _spawn(self) -> _Worker | None:
        # Spawned under the lock that close() takes: a worker either exists in _all when
        # close() runs (and is killed) or is never started.
        with self._lock:
            if self._closed:
                return None
            w = _Worker(self._memory_mb)
            self._all.add(w)
            return w

    def _await_ready(self, w: _Worker) -> bool:
        try:
            return w.receive(READY_TIMEOUT_S) == ["ready", None]
        except (EOFError, OSError, ValueError):
            return False

    def _discard(self, w: _Worker) -> None:
        with self._lock:
            self._all.discard(w)
        w.kill()

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
                    if not self._closed:
                        self._idle.put(w)
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

    def check(self, answer: str, gold: str, timeout: float) -> tuple[str, Any]:
        """("ok", bool), ("error", message) or ("timeout", None).

        Waits up to ``max_wait_s`` for an idle worker (not counted in ``timeout``), then
        gives the worker ``timeout`` seconds.
        """
        if self._closed:
            raise RuntimeError("math checker is closed")
        try:
            w = self._idle.get(timeout=self._max_wait_s)
        except queue.Empty:
            return ("timeout", None)
        try:
            w.send(answer, gold)
            reply = w.receive(max(timeout, 0.001))
            if reply is not None and len(reply) == 2:
                self._idle.put(w)
                return (str(reply[0]), reply[1])
        except (EOFError, OSError, ValueError):
            pass
        # Overran (or died): kill it, start a replacement in the background.
        self._discard(w)
        self.restarts += 1
        self._replace()
        return ("timeout", None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
            starters = list(self._starters)
        for w in workers:
            w.kill()
        for t in starters:
            t.join(READY_TIMEOUT_S)

    def pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._all]
