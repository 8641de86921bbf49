"""CPU time of a process tree by part, from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from rlfleet.bench.proctree import cpu_between, cpu_by_part, cpu_by_subtree

BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


def _name(cmdline: str) -> str | None:
    return "a" if cmdline.endswith(" alpha ") else "b" if cmdline.endswith(" beta ") else None


def test_each_part_holds_its_subtree_and_the_rest_is_the_roots() -> None:
    # root -> "alpha" (which starts a busy grandchild and reaps it) and "beta" (idle):
    # alpha's part holds the grandchild's CPU once reaped; the root's figure is its own.
    alpha_code = (
        f"import subprocess, sys, time\n"
        f"subprocess.run([sys.executable, '-c', {BUSY.format(s=0.4)!r}], check=True)\n"
        f"print('done', flush=True)\ntime.sleep(30)\n"
    )
    alpha = subprocess.Popen(
        [sys.executable, "-c", alpha_code, "alpha"], stdout=subprocess.PIPE, text=True
    )
    beta = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "beta"])
    try:
        assert alpha.stdout is not None and alpha.stdout.readline() == "done\n"
        own = sum(os.times()[:4])
        parts = cpu_by_part(os.getpid(), _name)
    finally:
        for p in (alpha, beta):
            p.kill()
            p.wait()
    assert parts["a"] >= 0.35  # (the grandchild's 0.4 s, reaped by alpha)
    assert parts["b"] < 0.3
    # The root (this process) is its own time and its reaped children's, as os.times says.
    assert abs(parts["root"] - own) < 0.2


def test_a_process_that_is_gone_counts_nothing() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    time.sleep(0.01)
    assert cpu_by_part(gone.pid, lambda cmd: None) == {}


def test_between_snapshots_a_replaced_child_counts_nothing_and_a_new_one_counts_whole() -> None:
    # "alpha" burns CPU and is reaped by this process between the snapshots (cpu_by_part
    # would move its whole life into the root); "beta" starts in between and burns 0.3 s.
    alpha = subprocess.Popen([sys.executable, "-c", BUSY.format(s=0.4) + "time.sleep(30)", "alpha"])
    try:
        time.sleep(0.1)
        while cpu_by_part(os.getpid(), _name).get("a", 0.0) < 0.35:
            time.sleep(0.05)
        before = cpu_by_subtree(os.getpid(), _name)
    finally:
        alpha.kill()
        alpha.wait()
    beta = subprocess.Popen(
        [
            sys.executable,
            "-c",
            BUSY.format(s=0.3) + "print('done', flush=True)\ntime.sleep(30)",
            "beta",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert beta.stdout is not None and beta.stdout.readline() == "done\n"
        after = cpu_by_subtree(os.getpid(), _name)
    finally:
        beta.kill()
        beta.wait()
    assert before[alpha.pid][0] == "a" and before[alpha.pid][1] >= 0.35
    parts = cpu_between(before, after)
    assert "a" not in parts
    assert 0.25 <= parts["b"] < 0.6
    assert parts["root"] < 0.2  # (this process's own time only: it reaped alpha)
