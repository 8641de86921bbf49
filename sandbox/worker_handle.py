"""Host side of one sandbox worker (``worker/zygote.py``): send it runs, read their facts.

A ``WorkerHandle`` speaks the worker's frame protocol over a pair of file descriptors; the
backends start the worker and hand over its descriptors: ``local_backend.LocalWorker`` as a
host process with its own cgroup base, ``docker_backend`` inside a long-lived container.
The typed records of one run (``RunRequest``, ``RunLimits``, ``RunFacts``) live here too.
"""

from __future__ import annotations

import os
import select
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlfleet.sandbox.worker import frames

WORKER_SCRIPT = Path(frames.__file__).resolve().with_name("zygote.py")


class WorkerError(RuntimeError):
    """The worker failed (crashed, hung, broke protocol): a system error, never the program's."""


class BackendUnavailable(WorkerError):
    """No worker can start here (no engine answers, the image is missing); the message says
    what to do about it."""


@dataclass(frozen=True, kw_only=True)
class RunLimits:
    cpu_s: float = 2.0
    """CPU time (user + system) of the whole run's cgroup."""
    wall_s: float = 6.0
    """Wall time from fork to exit; the run is killed after it."""
    memory_mb: int = 256
    """cgroup memory limit (includes tmpfs files written and output buffers)."""
    pids: int = 64
    """Tasks (processes and threads) at once in the run's cgroup."""
    output_bytes: int = 16 << 20
    """stdout beyond this is an output-limit verdict."""
    fsize_bytes: int = 32 << 20
    """RLIMIT_FSIZE: largest file the program may write (stdout included)."""
    stderr_bytes: int = 8192
    """stderr bytes returned (the rest is dropped)."""

    def to_wire(self) -> dict[str, Any]:
        return {
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "memory_bytes": self.memory_mb << 20,
            "pids": self.pids,
            "output_bytes": self.output_bytes,
            "fsize_bytes": max(self.fsize_bytes, self.output_bytes + 1),
            "stderr_bytes": self.stderr_bytes,
        }


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    kind: str
    """``python`` (run in the forked interpreter) or ``exec`` (execve ``argv``)."""
    limits: RunLimits
    stdin: bytes = b""
    code: str = ""
    mode: str = "stdio"
    """python: ``stdio``, ``call`` (JSON args on stdin, JSON result on stdout), ``test``
    (``test_code`` run against the program, see ``worker/testrun.py``) or ``syntax``."""
    fn_name: str = ""
    test_code: str = ""
    """mode ``test``: the test code, run in its own process against the program's functions."""
    test_method: str = ""
    """mode ``test``: the unittest method (``Class.method``) to run; empty runs the code alone."""
    argv: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    """exec: variables added to the run's clean environment (it holds nothing of the host's)."""
    files: tuple[tuple[str, bytes, int], ...] = ()
    """(path under /tmp, content, mode) placed before the run."""
    capture: str = ""
    """A path under /tmp returned as ``artifact`` when the run exits 0 (a compiled binary)."""
    report_syntax: bool = False
    """python ``stdio``/``call``: the run checks the source's syntax itself. A source that
    does not compile ends the run as a ``syntax`` run would, with ``syntax_error`` in the
    facts' ``extra``, said on a channel the submission never holds (``worker/program.py``)."""


@dataclass(frozen=True, kw_only=True)
class RunFacts:
    """What happened, as measured by the worker; verdicts are decided from these."""

    exit_code: int | None
    signal: int | None
    cpu_s: float
    wall_s: float
    peak_bytes: int
    oom_kills: int
    wall_timeout: bool
    stdout: bytes
    stdout_size: int
    stderr: bytes
    artifact: bytes = b""
    cpu_timeout: bool = False
    """Killed by the worker for going over the CPU-time limit."""
    system_error: str = ""
    memory_exact: bool = True
    """Memory limited and measured for the run as a whole (a cgroup); False in the local
    backend's rlimit fallback, where the limit is per process and the peak is the largest
    process's resident peak (docs/sandbox.md)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failure(cls, message: str) -> RunFacts:
        """Facts of a run that never happened because of us (a system error)."""
        return cls(
            exit_code=None,
            signal=None,
            cpu_s=0.0,
            wall_s=0.0,
            peak_bytes=0,
            oom_kills=0,
            wall_timeout=False,
            stdout=b"",
            stdout_size=0,
            stderr=b"",
            system_error=message,
        )


class WorkerHandle:
    """One worker reached over (read fd, write fd). Not thread-safe: one run at a time."""

    def __init__(self) -> None:
        self._rfd = -1
        self._wfd = -1
        self.runs = 0
        self._lock = threading.Lock()

    def _handshake(self, setup: dict[str, Any], timeout_s: float) -> None:
        frames.write_frame(self._wfd, setup)
        reply, _ = self._read_reply(timeout_s)
        if not reply.get("ok"):
            raise WorkerError(reply.get("error", "worker setup failed"))

    def _read_reply(self, timeout_s: float) -> tuple[dict[str, Any], list[bytes]]:
        try:
            ready, _, _ = select.select([self._rfd], [], [], timeout_s)
        except (OSError, ValueError) as e:
            raise self._broke(e) from e
        if not ready:
            raise WorkerError(f"worker did not answer within {timeout_s:.1f}s")
        try:
            return frames.read_frame(self._rfd)
        except (EOFError, ValueError, OSError) as e:
            raise self._broke(e) from e

    def run(self, req: RunRequest) -> RunFacts:
        header: dict[str, Any] = {
            "op": "run",
            "kind": req.kind,
            "limits": req.limits.to_wire(),
            "mode": req.mode,
        }
        blobs = [req.stdin]
        if req.kind == "python":
            header["code"] = req.code
            header["fn_name"] = req.fn_name
            if req.mode == "test":
                header["test_method"] = req.test_method
                blobs.append(req.test_code.encode("utf-8", "surrogatepass"))
            if req.report_syntax:
                header["report_syntax"] = True
        else:
            header["argv"] = list(req.argv)
            if req.env:
                header["env"] = [list(pair) for pair in req.env]
        if req.files:
            header["files"] = [(path, mode) for path, _, mode in req.files]
            blobs.extend(content for _, content, _ in req.files)
        if req.capture:
            header["capture"] = req.capture
        with self._lock:
            try:
                frames.write_frame(self._wfd, header, blobs)
            except OSError as e:
                raise self._broke(e) from e
            # The worker kills the run at wall_s; allow it time to report before giving up.
            reply, out = self._read_reply(req.limits.wall_s + 10.0)
            self.runs += 1
        if not reply.get("ok", False):
            raise WorkerError(reply.get("error", "run failed"))
        stdout, stderr, artifact = [*out, b"", b"", b""][:3]
        not_facts = ("stdout", "stderr", "artifact", "extra")
        known = {f for f in RunFacts.__dataclass_fields__ if f not in not_facts}
        facts = {k: v for k, v in reply.items() if k in known}
        extra = {k: v for k, v in reply.items() if k not in known and k != "ok"}
        facts.setdefault("system_error", "")
        return RunFacts(stdout=stdout, stderr=stderr, artifact=artifact, extra=extra, **facts)

    def _broke(self, e: BaseException) -> WorkerError:
        """The channel failed: the error, with what its fds are now (EBADF may be theirs)."""

        def target(fd: int) -> str:
            try:
                return os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return "closed"

        fds = ""
        if self._rfd >= 0:
            read, write = target(self._rfd), target(self._wfd)
            fds = f" (read fd {self._rfd}: {read}; write fd {self._wfd}: {write})"
        return WorkerError(f"worker channel broke: {e!r}{fds}")

    def close(self) -> None:
        """Stop the worker gracefully and everything it started; safe to call twice."""
        raise NotImplementedError

    def kill(self) -> None:
        """Stop the worker now, even mid-run, and everything it started."""
        raise NotImplementedError


def facts_as_dict(facts: RunFacts) -> dict[str, Any]:
    d = asdict(facts)
    d["stdout"] = facts.stdout[:200]
    d["stderr"] = facts.stderr[:200]
    return d
