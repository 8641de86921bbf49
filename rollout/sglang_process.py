"""SGLang as a child process: started in a process group of its own (SGLang forks a
scheduler and a detokenizer, and those must go with it), waited on until healthy within a
bound, stopped with SIGTERM to the whole group and SIGKILL after a grace period.

Its output goes to a log file; the last lines of it are quoted in the errors, since that is
where SGLang says why it did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from rlfleet.rollout.engine import EngineError

# Environment SGLang reads that would change what the adapter relies on.
SCRUBBED_ENV = (
    # Makes SGLang return logprobs of the unscaled distribution (before temperature),
    # which no longer match the learner's log_softmax(logits / T).
    "SGLANG_RETURN_ORIGINAL_LOGPROB",
)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(empty log)"


class SglangProcess:
    """A started server process; ``stop()`` ends its process group."""

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    @classmethod
    async def start(
        cls, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path
    ) -> SglangProcess:
        full_env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        full_env.update(env)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    env=full_env,
                    start_new_session=True,
                )
            except OSError as err:
                raise EngineError(f"could not start SGLang ({argv[0]}): {err}") from None
        return cls(proc, log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait_healthy(
        self, probe: Callable[[float], Awaitable[bool]], *, timeout_s: float
    ) -> None:
        """Poll ``probe(per_try_timeout)`` until it answers True; EngineError (with the
        log's tail) when the process exits first or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        pause = 0.05
        while True:
            if self.proc.returncode is not None:
                raise EngineError(
                    f"SGLang exited with status {self.proc.returncode} before it became "
                    f"healthy; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise EngineError(
                    f"SGLang did not become healthy within {timeout_s:g} s; last lines of "
                    f"{self.log_path}:\n{log_tail(self.log_path)}"
                )
            if await probe(min(5.0, max(left, 0.05))):
                return
            await asyncio.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 2, 1.0)

    async def stop(self, grace_s: float) -> None:
        """SIGTERM to the process group, SIGKILL to it after ``grace_s``."""
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group's id
        self._signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), grace_s)
        # Children may outlive the leader (or ignore SIGTERM): the group goes either way.
        self._signal_group(pgid, signal.SIGKILL)
        await self.proc.wait()

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
