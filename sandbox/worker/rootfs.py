"""The worker's private view of the filesystem: a minimal read-only root and a /tmp."""

import ctypes
import errno
import os
import shutil

from kernel import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWUTS,
    MNT_DETACH,
    MS_BIND,
    MS_MOVE,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    _check,
    libc,
    mount,
    syscall_number,
    unshare,
)


def _bind_readonly(source, target, gvisor):
    if gvisor:
        # gVisor (Debian's runsc) has neither recursive binds nor remounts: a bind takes
        # its flags when it is made (and the container's root is read-only anyway).
        mount(source, target, None, MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        return
    mount(source, target, None, MS_BIND | MS_REC)
    remount_read_only(target)


def build_root(tmp_mb, gvisor=False):
    """Enter private namespaces and pivot into a minimal read-only root with a tmpfs /tmp.

    Under gVisor (`gvisor`), which has no mount propagation, pivot_root, MS_MOVE or
    remounts, the root is entered with chroot and stays a writable tmpfs for the worker
    (root); the program cannot write to it all the same (uid 65534, no capabilities, every
    directory root's and 0755) nor chroot out of it (no CAP_SYS_CHROOT, seccomp, no fd
    outside it).
    """
    unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS)
    if not gvisor:
        mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Build the new root on a tmpfs mounted over /tmp: only this mount namespace sees it.
    new = "/tmp"
    mount("rlfleet-root", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=755")
    os.mkdir(f"{new}/usr")
    _bind_readonly("/usr", f"{new}/usr", gvisor)
    if os.path.isdir("/usr/local"):
        mount(
            "rlfleet-empty",
            f"{new}/usr/local",
            "tmpfs",
            MS_RDONLY | MS_NOSUID | MS_NODEV,
            "size=4k",
        )
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = f"/{name}"
        if os.path.islink(path):
            os.symlink(os.readlink(path), f"{new}/{name}")
        elif os.path.isdir(path):
            os.mkdir(f"{new}/{name}")
            _bind_readonly(path, f"{new}/{name}", gvisor)
    os.mkdir(f"{new}/etc")
    files = {
        "passwd": "root:x:0:0:root:/root:/bin/false\nnobody:x:65534:65534:nobody:/tmp:/bin/false\n",
        "group": "root:x:0:\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1 localhost\n",
        "hostname": "sandbox\n",
    }
    for name, text in files.items():
        with open(f"{new}/etc/{name}", "w") as f:
            f.write(text)
    for name in ("ld.so.cache", "ld.so.conf", "localtime"):
        if os.path.isfile(f"/etc/{name}"):
            shutil.copyfile(f"/etc/{name}", f"{new}/etc/{name}")
    # The JDK's configuration (Debian keeps it in /etc/java-NN-openjdk, linked from the JDK).
    for name in sorted(os.listdir("/etc")):
        if name.startswith("java-") and os.path.isdir(f"/etc/{name}"):
            os.mkdir(f"{new}/etc/{name}")
            _bind_readonly(f"/etc/{name}", f"{new}/etc/{name}", gvisor)
    if os.path.isdir("/etc/alternatives"):
        os.mkdir(f"{new}/etc/alternatives")
        for name in os.listdir("/etc/alternatives"):
            target = os.path.join("/etc/alternatives", name)
            if os.path.islink(target):
                os.symlink(os.readlink(target), f"{new}/etc/alternatives/{name}")
    os.mkdir(f"{new}/dev")
    for name in ("null", "zero", "full", "random", "urandom"):
        open(f"{new}/dev/{name}", "w").close()
        mount(f"/dev/{name}", f"{new}/dev/{name}", None, MS_BIND)
    if not gvisor:
        # (gVisor's proc ignores hidepid and subset: it would show the worker and the
        # sandbox kernel's files. Under it there is no /proc, so Java and Rust, which find
        # their own files through /proc/self/exe, do not build there.)
        _mount_proc(f"{new}/proc")
    os.symlink("/proc/self/fd", f"{new}/dev/fd")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{new}/dev/{name}")
    os.mkdir(f"{new}/tmp")
    mount("rlfleet-tmp", f"{new}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_mb}m,mode=1777")
    if gvisor:
        os.chroot(new)
        os.chdir("/")
        libc.sethostname(b"sandbox", 7)
        return
    os.mkdir(f"{new}/.old")
    os.chdir(new)
    if libc.syscall(syscall_number("pivot_root"), b".", b".old") == 0:
        os.chdir("/")
        _check(libc.umount2(b"/.old", MNT_DETACH), "umount old root")
        os.rmdir("/.old")
    elif ctypes.get_errno() == errno.EPERM:
        # Docker's default seccomp profile refuses pivot_root: move the new root over the
        # old one instead (covering it) and chroot into it. Programs lack CAP_SYS_CHROOT.
        os.rmdir(".old")
        mount(new, "/", None, MS_MOVE)
        os.chroot(".")
        os.chdir("/")
    else:
        _check(-1, "pivot_root")
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    libc.sethostname(b"sandbox", 7)


# statvfs flag -> mount flag, for the flags a bind mount keeps from its source.
_KEPT_FLAGS = (
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)


def remount_read_only(path):
    """Make a bind mount read-only, nosuid and nodev, keeping the source's other flags: in
    a user namespace a host mount's noexec and atime flags are locked, and a remount that
    leaves them out is refused."""
    have = os.statvfs(path).f_flag
    kept = 0
    for st_flag, ms_flag in _KEPT_FLAGS:
        if have & st_flag:
            kept |= ms_flag
    mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | kept)


def _mount_proc(target):
    """A /proc of the worker's PID namespace holding only process directories
    (``subset=pid``: no /proc/sys, meminfo, kcore...), each visible only to its own uid
    (``hidepid=invisible``): a run sees its own processes and nothing of the worker's.

    Toolchains find their own files through /proc/self/exe (rustc, the JDK's $ORIGIN).
    Kernels before 5.8 know neither option (EINVAL), and a user namespace may refuse a new
    proc mount (EPERM): the sandbox then has no /proc at all, and those toolchains fail
    (``rlfleet sandbox prepare`` says which).
    """
    os.mkdir(target)
    try:
        mount(
            "proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible,subset=pid"
        )
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EPERM):
            raise


def wipe_tmp():
    for name in os.listdir("/tmp"):
        path = os.path.join("/tmp", name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


# ---------------------------------------------------------------------------- running
