"""CPU time of a process tree by part, read from ``/proc`` (Linux): what each component of a
run (the learner, its rollout server, its sandbox server and everything they started) has
spent, so a benchmark can say how close a step is to the machine's CPU bound.

A process's figure is its own user + system time plus that of the children it has reaped;
a part's figure is the sum over the live processes of its subtree. (Children reaped by a
process that has itself exited are lost with it: snapshot while the tree is alive.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds including reaped children) of a live process."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:  # (gone since the listing)
        return None
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = text.rsplit(")", 1)[1].split()
    ticks = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return int(fields[1]), ticks / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def cpu_by_part(root: int, part_of: Callable[[str], str | None]) -> dict[str, float]:
    """CPU seconds of ``root``'s tree: a child of ``root`` whose command line
    ``part_of`` names starts a part holding its whole subtree; ``root`` and its other
    descendants count as ``"root"``."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (found := _stat(int(entry.name))) is not None:
            parent[int(entry.name)], cpu[int(entry.name)] = found
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, float] = {}

    def add(pid: int, part: str) -> None:
        out[part] = out.get(part, 0.0) + cpu[pid]
        for child in children.get(pid, []):
            name = part_of(_cmdline(child)) if pid == root else None
            add(child, name or part)

    if root in cpu:
        add(root, "root")
    return out
