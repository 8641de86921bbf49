"""Where the local backend puts its cgroups: the hierarchy, and on v2 the parent cgroup.

The v2 parts that need a v2 kernel (vacating a busy namespace root, a delegated unit) are
checked on this machine's hierarchy where it is v2, and through the rules that decide them
everywhere: an explicit parent, the delegation marks systemd sets, the clear errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rlfleet.sandbox import cgroups


def fake_cgroup(path: Path, controllers: str = "cpu memory pids") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.controllers").write_text(controllers + "\n")
    return path


def test_explicit_parent_must_exist(tmp_path: Path) -> None:
    root = fake_cgroup(tmp_path)
    fake_cgroup(root / "system.slice" / "verifier.service")
    assert (
        cgroups._v2_parent(root, "/system.slice/verifier.service")
        == root / "system.slice" / "verifier.service"
    )
    with pytest.raises(cgroups.CgroupError, match="'nope': no such cgroup"):
        cgroups._v2_parent(root, "nope")


def test_own_cgroup_is_used_only_when_delegated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = fake_cgroup(tmp_path)
    unit = fake_cgroup(root / "system.slice" / "verifier.service")
    monkeypatch.setattr(cgroups, "own_v2_cgroup", lambda: "/system.slice/verifier.service")
    assert cgroups._v2_parent(root, "") == root  # not delegated: the root, as before
    os.setxattr(unit, "trusted.delegate", b"1")  # what systemd sets for Delegate=yes
    assert cgroups.is_delegated(unit)
    assert cgroups._v2_parent(root, "") == unit
    # Once the server has moved itself into the unit's leaf, the unit is still the parent.
    fake_cgroup(unit / cgroups.HOST_LEAF)
    monkeypatch.setattr(
        cgroups, "own_v2_cgroup", lambda: f"/system.slice/verifier.service/{cgroups.HOST_LEAF}"
    )
    assert cgroups._v2_parent(root, "") == unit
    monkeypatch.setattr(cgroups, "own_v2_cgroup", lambda: "/")
    assert cgroups._v2_parent(root, "") == root  # the root of a (namespace's) hierarchy


def test_this_machine_hierarchy() -> None:
    h = cgroups.detect()
    if h.version == 1:
        with pytest.raises(cgroups.CgroupParentError, match="no such cgroup"):
            cgroups.detect("/rlfleet-no-such-cgroup")
        # A parent on v1 is the same path in each controller's hierarchy.
        named = cgroups.detect("/")
        assert named.roots == h.roots
        # Each root is where the kernel says that controller is mounted (read independently).
        mounts: dict[str, str] = {}
        for line in Path("/proc/self/mounts").read_text().splitlines():
            _, point, fstype, options = line.split()[:4]
            if fstype == "cgroup":
                for option in options.split(","):
                    mounts.setdefault(option, point)
        for controller, root in h.roots.items():
            assert str(root) == mounts[controller], controller
    else:
        controllers = (h.roots["unified"] / "cgroup.controllers").read_text().split()
        assert {"memory", "pids"} <= set(controllers)


def test_cli_names_a_bad_cgroup_parent(tmp_path: Path) -> None:
    cases = tmp_path / "c.jsonl"
    cases.write_text('{"id": "a", "kind": "math", "completion": "\\\\boxed{1}", "gold": "1"}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "rlfleet.cli", "verify", str(cases), "--cgroup-parent", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "cgroup" in proc.stderr and ("nope" in proc.stderr or "v2" in proc.stderr)


def test_servers_sweeping_the_same_stale_cgroups_at_once_do_not_fail(tmp_path: Path) -> None:
    """Two sandbox servers starting together both remove a dead server's leftovers: each
    may find the other has removed part of the tree under it."""
    roots = {"memory": tmp_path / "memory", "pids": tmp_path / "pids"}
    h = cgroups.Hierarchy(version=1, roots=roots)
    for round_ in range(20):
        for root in roots.values():
            for tag in (f"{2**22 + round_}-0", f"{2**22 + round_}-1"):  # (no such pids)
                for run in range(5):
                    (root / "rlfleet" / tag / "worker" / f"run{run}").mkdir(parents=True)
        errors: list[BaseException] = []

        def sweep(errors: list[BaseException] = errors) -> None:
            try:
                cgroups.remove_stale_bases(h)
            except BaseException as e:  # (collected for the assertion)
                errors.append(e)

        threads = [threading.Thread(target=sweep) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and cgroups.leftover_bases(h) == []
