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


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, own CPU seconds, CPU seconds including reaped children) of a live
    process."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:  # (gone since the listing)
        return None
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = text.rsplit(")", 1)[1].split()
    own = sum(int(v) for v in fields[11:13])  # utime, stime
    reaped = sum(int(v) for v in fields[13:15])  # cutime, cstime
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), own / tick, (own + reaped) / tick


def _processes() -> tuple[dict[int, list[int]], dict[int, float], dict[int, float]]:
    """(children by pid, own CPU by pid, CPU with reaped children by pid) of every live
    process."""
    parent: dict[int, int] = {}
    own: dict[int, float] = {}
    cpu: dict[int, float] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (found := _stat(int(entry.name))) is not None:
            pid = int(entry.name)
            parent[pid], own[pid], cpu[pid] = found
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    return children, own, cpu


def _cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def cpu_by_part(root: int, part_of: Callable[[str], str | None]) -> dict[str, float]:
    """CPU seconds of ``root``'s tree: a child of ``root`` whose command line
    ``part_of`` names starts a part holding its whole subtree; ``root`` and its other
    descendants count as ``"root"``."""
    children, _, cpu = _processes()
    out: dict[str, float] = {}

    def add(pid: int, part: str) -> None:
        out[part] = out.get(part, 0.0) + cpu[pid]
        for child in children.get(pid, []):
            name = part_of(_cmdline(child)) if pid == root else None
            add(child, name or part)

    if root in cpu:
        add(root, "root")
    return out


def cpu_by_subtree(root: int, part_of: Callable[[str], str | None]) -> dict[int, tuple[str, float]]:
    """A snapshot of ``root``'s tree for ``cpu_between``: ``root``'s own CPU seconds (its
    threads, without the children it reaped) under its pid, and the subtree of each of its
    live children (with what they reaped) under the child's pid, each with its part as in
    ``cpu_by_part``."""
    children, own, cpu = _processes()
    if root not in own:
        return {}

    def subtree(pid: int) -> float:
        return cpu[pid] + sum(subtree(child) for child in children.get(pid, []))

    out = {root: ("root", own[root])}
    for child in children.get(root, []):
        out[child] = (part_of(_cmdline(child)) or "root", subtree(child))
    return out


def cpu_between(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds by part from one ``cpu_by_subtree`` snapshot of a tree to a later one.

    Subtree by subtree: one that started in between counts whole, one that ended in between
    (reaped by the root, which ``cpu_by_part`` would then charge with its whole life)
    counts nothing, so a replaced child never counts twice nor makes its part go down.
    """
    out: dict[str, float] = {}
    for pid, (part, seconds) in after.items():
        start = before.get(pid)
        out[part] = out.get(part, 0.0) + seconds - (start[1] if start is not None else 0.0)
    return out
