"""Run a command as another (non-root) user, with some root-only paths made readable to it.

    python3 rootless_exec.py [--cgroup DIR] USER PATH... -- COMMAND...

Run as root. In a private mount namespace (the host sees nothing of it), each directory on
the way to a PATH that the user may not enter (``/root``, say, where a checkout or an
interpreter may live) is covered by a tmpfs holding only binds of the entries leading to
the PATHs; nothing's permissions change. Then COMMAND runs as USER with an empty
environment but for ``HOME``, ``PATH``, ``LANG`` and the ``RLFLEET_TEST_*`` variables,
first moved into the cgroup (v2) ``DIR`` when given, as systemd starts a delegated unit.
Exits with the command's status. Stdlib only.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import stat
import sys
import tempfile
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18

libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    ret = libc.mount(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _enterable(path: Path, uid: int, gids: set[int]) -> bool:
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _first_blocked(path: Path, uid: int, gids: set[int]) -> Path | None:
    for ancestor in reversed(path.parents):
        if ancestor != Path("/") and not _enterable(ancestor, uid, gids):
            return ancestor
    return None


def open_paths(paths: list[Path], uid: int, gids: set[int]) -> None:
    """Cover each blocking directory with a tmpfs that holds binds of what leads to paths."""
    stage = Path(tempfile.mkdtemp(prefix="rlfleet-stage-"))  # 0700: root's alone
    for _ in range(32):
        blocked = {b for p in paths if (b := _first_blocked(p, uid, gids)) is not None}
        if not blocked:
            return
        top = min(blocked, key=lambda b: len(b.parts))
        keep = {p.relative_to(top).parts[0] for p in paths if top in p.parents}
        saved = stage / str(len(list(stage.iterdir())))
        saved.mkdir()
        _mount(str(top), str(saved), None, MS_BIND | MS_REC)
        _mount("rlfleet-open", str(top), "tmpfs", 0, "mode=755")
        for name in sorted(keep):
            source, target = saved / name, top / name
            if source.is_dir():
                target.mkdir()
            else:
                target.touch()
            _mount(str(source), str(target), None, MS_BIND | MS_REC)
    raise RuntimeError(f"cannot open a way to {paths}")


def main(argv: list[str]) -> int:
    if argv[0] == "--cgroup":
        Path(argv[1], "cgroup.procs").write_text(str(os.getpid()))
        argv = argv[2:]
    split = argv.index("--")
    user, paths, command = argv[0], [Path(p).resolve() for p in argv[1:split]], argv[split + 1 :]
    pw = pwd.getpwnam(user)
    gids = {pw.pw_gid, *os.getgrouplist(user, pw.pw_gid)}
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    open_paths(paths, pw.pw_uid, gids)
    env = {"HOME": pw.pw_dir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("RLFLEET_TEST_")})
    os.setgroups(sorted(gids))
    os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
    os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    os.chdir(pw.pw_dir)
    os.execve(command[0], command, env)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
