"""Thin ctypes access to the kernel calls the worker needs (stdlib only)."""

import ctypes
import errno
import os

NOBODY = 65534
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWCGROUP = 0x02000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_RELATIME = 1 << 21
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_MOVE = 8192
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAPABILITY_VERSION_3 = 0x20080522
SECCOMP_MODE_FILTER = 2

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags):
    _check(libc.unshare(ctypes.c_int(flags)), "unshare")


def syscall_number(name):
    """The native number of a syscall, from libseccomp's tables (no per-arch constants)."""
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:
        raise OSError(errno.ENOSYS, f"unknown syscall {name}")
    return nr


def mount(source, target, fstype, flags=0, data=None):
    _check(
        libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def enter_user_namespace(outer_uid, outer_gid):
    """Become NOBODY (uid and gid) of a new user namespace that maps only the caller's own
    ids, with every capability inside it: what a user who is not root may do."""
    unshare(CLONE_NEWUSER)
    # An unprivileged process may map its own ids only, and its gid only once it has
    # given up setgroups (which could otherwise drop a group that denies it access).
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{NOBODY} {outer_uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{NOBODY} {outer_gid} 1")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_bounding_capabilities():
    """Empty the bounding and ambient sets: nothing executed later can gain a capability.
    Needs CAP_SETPCAP (called before the uid change that clears it), which a worker in a
    user namespace has and one in a container may lack: there the bounding set stays, and
    no_new_privs with an empty permitted set (``drop_capabilities``) is the wall."""
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL:  # past the kernel's last capability
                break
            if err == errno.EPERM and cap == 0:  # no CAP_SETPCAP
                break
            _check(-1, f"drop capability {cap} from the bounding set")
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient caps")


def drop_capabilities():
    """Empty the effective, permitted and inheritable sets. A uid change from 0 does it
    too; in a user namespace the worker's runs keep its uid, so there only this does."""
    header = _CapHeader(CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(libc.capset(ctypes.byref(header), data), "capset")
