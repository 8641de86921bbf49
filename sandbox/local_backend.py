"""The local backend: the sandbox worker as a host process (namespaces, cgroups where it
may have them; ``local_mode`` says which)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass, field

from rlfleet.sandbox import cgroups
from rlfleet.sandbox.local_mode import LocalMode
from rlfleet.sandbox.worker_handle import WORKER_SCRIPT, WorkerHandle


@dataclass(frozen=True, kw_only=True)
class LocalWorkerConfig:
    python: str = "/usr/bin/python3"
    """Interpreter for the worker and for Python submissions (an absolute path: no shims)."""
    tmp_mb: int = 64
    """Size of the run's private /tmp."""
    caps: cgroups.BaseLimits = field(default_factory=cgroups.BaseLimits)
    """Caps on the worker and all its runs together (a second wall behind per-run limits)."""


class LocalWorker(WorkerHandle):
    """The worker as a host process: as root, or in a user namespace of its own (``mode``)."""

    def __init__(self, tag: str, mode: LocalMode, config: LocalWorkerConfig) -> None:
        super().__init__()
        self.tag = tag
        self.mode = mode
        self._hierarchy = hierarchy = mode.hierarchy
        if hierarchy is not None:
            cgroups.remove_base(hierarchy, tag)
            cgroups.create_base(hierarchy, tag, config.caps)
        self._proc = subprocess.Popen(
            [config.python, "-I", "-S", "-B", str(WORKER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={},
            close_fds=True,
            start_new_session=True,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._wfd = self._proc.stdin.fileno()
        self._rfd = self._proc.stdout.fileno()
        try:
            # The worker waits for its setup frame before doing anything, so it (and all it
            # will start) is inside its capped cgroup before any run.
            setup: dict[str, object] = {"cgroup": None, "tmp_mb": config.tmp_mb}
            if hierarchy is not None:
                cgroups.join_worker_leaf(hierarchy, tag, self._proc.pid)
                setup["cgroup"] = hierarchy.spec(tag)
            if mode.rootless:
                setup["userns"] = {"uid": os.getuid(), "gid": os.getgid()}
            self._handshake(setup, 30.0)
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def close(self, grace_s: float = 0.5) -> None:
        with contextlib.suppress(OSError):
            if self._proc.stdin:
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        with contextlib.suppress(OSError):
            if self._proc.stdout:
                self._proc.stdout.close()
        # The run's init and program sit in the worker's cgroups: killing them there
        # reaches everything, even when the worker itself died first. (Without cgroups
        # the kernel does it: the worker is PID 1 of their namespace, and dies with its
        # parent, this process's child.)
        self._remove_cgroups()

    def _remove_cgroups(self) -> None:
        if self._hierarchy is not None:
            cgroups.remove_base(self._hierarchy, self.tag)

    def kill(self) -> None:
        # Pipes stay open: a thread may be reading the reply; it sees EOF and gives up.
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        self._proc.wait()
        self._remove_cgroups()


def worker_tag(index: int) -> str:
    return f"{os.getpid()}-{index}"
