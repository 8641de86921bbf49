"""Runs tests/learner_worker.py as ``ranks`` learner processes (torchrun's standalone
rendezvous on loopback) or as one plain process, for the learner's process tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "learner_worker.py"
LAUNCH_TIMEOUT_S = 120


async def launch(args: dict[str, Any], ranks: int) -> None:
    """Run the worker as ``ranks`` processes (torchrun's standalone rendezvous on
    localhost) or as one plain process; killed, with its whole group, on timeout."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",  # (gloo's peers meet on loopback, whatever the hostname resolves to)
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    head = [sys.executable]
    if ranks > 1:
        head += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
        head += ["--local-addr=127.0.0.1"]
    proc = await asyncio.create_subprocess_exec(
        *head,
        str(WORKER),
        json.dumps(args),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), LAUNCH_TIMEOUT_S)
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.stdout is not None
        output = await proc.stdout.read()
        await proc.wait()
        raise AssertionError(
            f"the learner did not end within {LAUNCH_TIMEOUT_S} s:\n"
            + output.decode(errors="replace")[-60000:]
        ) from None
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode == 0, output.decode(errors="replace")[-60000:]
