"""Worker processes for algebra, each check bounded in wall time from any thread.

A check borrows an idle process, sends it the pair and waits at most the timeout; a process
that overruns is killed and a replacement started in the background. No signals are used,
so this works from any thread or event loop (unlike ``signal.alarm``).
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
from typing import Any

READY_TIMEOUT_S = 60.0


class _Proc:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rlfleet.sandbox.mathcheck.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            start_new_session=True,
        )
        self._buf = b""

    def send(self, answer: str, gold: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps([answer, gold]) + "\n").encode())
        self.process.stdin.flush()

    def receive(self, timeout: float) -> list[Any] | None:
        """The next reply line, or None when none came in time."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = _now() + timeout
        while b"\n" not in self._buf:
            left = deadline - _now()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("math worker exited")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()
        for f in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                if f:
                    f.close()


def _now() -> float:
    import time

    return time.monotonic()


class AlgebraPool:
    def __init__(self, workers: int) -> None:
        self._idle: queue.Queue[_Proc] = queue.Queue()
        self._all: set[_Proc] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.restarts = 0
        started = [self._start() for _ in range(workers)]
        for p in started:
            if p.receive(READY_TIMEOUT_S) != ["ready", None]:
                self.close()
                raise RuntimeError("math worker did not start")
            self._idle.put(p)

    def _start(self) -> _Proc:
        p = _Proc()
        with self._lock:
            self._all.add(p)
        return p

    def _replace(self) -> None:
        def start() -> None:
            p = self._start()
            try:
                ready = p.receive(READY_TIMEOUT_S) == ["ready", None]
            except (EOFError, OSError, ValueError):
                ready = False
            if ready and not self._closed:
                self._idle.put(p)
            else:
                with self._lock:
                    self._all.discard(p)
                p.kill()

        threading.Thread(target=start, daemon=True, name="mathcheck-restart").start()

    def check(self, answer: str, gold: str, timeout: float) -> tuple[str, Any]:
        """("ok", bool), ("error", message) or ("timeout", None)."""
        if self._closed:
            raise RuntimeError("math checker is closed")
        deadline = _now() + timeout
        try:
            proc = self._idle.get(timeout=timeout)
        except queue.Empty:
            return ("timeout", None)
        try:
            proc.send(answer, gold)
            reply = proc.receive(max(deadline - _now(), 0.001))
            if reply is not None:
                self._idle.put(proc)
                return (reply[0], reply[1])
        except (EOFError, OSError, ValueError):
            pass
        # Overran (or died): kill it, start a replacement in the background.
        with self._lock:
            self._all.discard(proc)
        proc.kill()
        self.restarts += 1
        if not self._closed:
            self._replace()
        return ("timeout", None)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            procs = list(self._all)
            self._all.clear()
        for p in procs:
            p.kill()

    def pids(self) -> list[int]:
        with self._lock:
            return [p.process.pid for p in self._all]
