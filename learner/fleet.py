"""The embedded fleet: ``rlfleet serve sandbox`` and ``rlfleet serve rollout`` started as child
processes on loopback (port 0), and always stopped.

Each child is the leader of its own process group (a new session), so stopping it stops
whatever it started too: SIGTERM to the group (the servers drain and exit), then SIGKILL to
the group after a grace period. The children also get SIGTERM from the kernel when the
learner dies without cleaning up (``PR_SET_PDEATHSIG``; kill -9 included). A child's stderr
goes to a log file in the run dir, which is also where its ``listening on HOST:PORT`` line
is read from (no pipe that could fill and block it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from rlfleet.errors import CommandError

PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 10.0
RUN_MARKER = "RLFLEET_TRAIN_RUN"
"""Set in the embedded servers' environment to the run dir: which processes a run started
(inherited by whatever they start) can be found by it."""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel sends SIGTERM when the parent
    # (the learner) exits, however it exits.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    target: str = ""

    @property
    def pgid(self) -> int:
        return self.proc.pid  # (the leader of its own session and group)


def start_child(name: str, args: list[str], log: Path, run_dir: Path) -> Child:
    """Start ``rlfleet <args> --port 0`` in a new session, stderr to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, RUN_MARKER: str(run_dir.resolve())}
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlfleet.cli", *args, "--host", "127.0.0.1", "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    return Child(name=name, proc=proc, log=log)


async def wait_listening(child: Child, timeout_s: float) -> str:
    """The child's ``HOST:PORT`` once it announces it; ``CommandError`` if it exits or is
    not listening in time (its last log line says why)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = child.log.read_text(errors="replace")
        for line in text.splitlines():
            if "listening on " in line:
                child.target = line.rsplit(" ", 1)[1].strip()
                return child.target
        code = child.proc.poll()
        if code is not None or time.monotonic() > deadline:
            lines = [ln for ln in text.splitlines() if ln.strip()]
            last = lines[-1] if lines else "(nothing on stderr)"
            what = (
                f"exited with {code}"
                if code is not None
                else f"not listening after {timeout_s:g} s"
            )
            raise CommandError(f"embedded {child.name} server {what}: {last} (log: {child.log})")
        await asyncio.sleep(0.05)


def stop_child(child: Child, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the child's group, then SIGKILL to it after ``grace_s``; returns once the
    child is reaped and its group is empty."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        # The leader is gone or stuck; whatever is left in its group goes too.
        os.killpg(child.pgid, signal.SIGKILL)
    child.proc.wait()


def stop_children(children: list[Child]) -> None:
    for child in reversed(children):
        stop_child(child)


@dataclass(frozen=True)
class Targets:
    rollout: str
    verifier: str


@asynccontextmanager
async def embedded_fleet(
    *,
    run_dir: Path,
    model: Path,
    rollout: str | None,
    verifier: str | None,
    sandbox_workers: int,
    start_timeout_s: float,
    rollout_threads: int = 0,
) -> AsyncIterator[Targets]:
    """Targets of the fleet: the given ones, and children started for those that are None;
    the children are stopped on the way out, whatever ends the block (cancellation too)."""
    children: list[Child] = []
    async with AsyncExitStack() as stack:
        stack.callback(stop_children, children)
        logs = run_dir / "logs"
        if verifier is None:
            args = ["serve", "sandbox", "--workers", str(sandbox_workers)]
            children.append(start_child("sandbox", args, logs / "sandbox.log", run_dir))
        if rollout is None:
            args = ["serve", "rollout", "--engine", "torch", "--model", str(model)]
            if rollout_threads:
                args += ["--threads", str(rollout_threads)]
            children.append(start_child("rollout", args, logs / "rollout.log", run_dir))
        for child in children:
            await wait_listening(child, start_timeout_s)
        by_name = {c.name: c.target for c in children}
        yield Targets(
            rollout=rollout if rollout is not None else by_name["rollout"],
            verifier=verifier if verifier is not None else by_name["sandbox"],
        )
