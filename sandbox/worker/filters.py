"""The seccomp filter every run inherits: built once with libseccomp, loaded with prctl."""

import ctypes
import errno
import os

from kernel import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_SECCOMP,
    SECCOMP_MODE_FILTER,
    _check,
    libc,
)

# Denied with EPERM: kernel surfaces a judged program never needs, and every way to make
# namespaces, mounts or to reach other processes' memory.
DENIED_SYSCALLS = [
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "mount",
    "umount2",
    "pivot_root",
    "unshare",
    "setns",
    "chroot",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "name_to_handle_at",
    "open_by_handle_at",
    "quotactl",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "fanotify_init",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "ioperm",
    "iopl",
    "syslog",
    "uselib",
    "personality",
    "vhangup",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "migrate_pages",
    "move_pages",
    "lookup_dcookie",
]


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def build_seccomp_filter():
    """Compile the filter once with libseccomp; each run loads the ready BPF with prctl."""
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ScmpArgCmp),
    ]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    cmp_ne, cmp_masked_eq = 1, 7
    ctx = lib.seccomp_init(allow)
    if not ctx:
        raise OSError("seccomp_init failed")

    def rule(action, name, *cmps):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return
        arr = (ScmpArgCmp * max(1, len(cmps)))(*cmps)
        ret = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
        if ret != 0:
            raise OSError(-ret, f"seccomp rule {name}")

    try:
        for name in DENIED_SYSCALLS:
            rule(eperm, name)
        # Sockets: AF_UNIX only (socketpair for multiprocessing); no network families.
        rule(eperm, "socket", ScmpArgCmp(0, cmp_ne, 1, 0))
        # clone3 hides its flags in memory: refuse it so libc falls back to clone, whose
        # flags can be filtered for namespace creation.
        rule(enosys, "clone3")
        for flag in (
            CLONE_NEWUSER,
            CLONE_NEWNS,
            CLONE_NEWNET,
            CLONE_NEWPID,
            CLONE_NEWCGROUP,
            CLONE_NEWIPC,
            CLONE_NEWUTS,
        ):
            rule(eperm, "clone", ScmpArgCmp(0, cmp_masked_eq, flag, flag))
        rfd, wfd = os.pipe()
        ret = lib.seccomp_export_bpf(ctx, wfd)
        os.close(wfd)
        if ret != 0:
            raise OSError(-ret, "seccomp_export_bpf")
        bpf = b""
        while chunk := os.read(rfd, 65536):
            bpf += chunk
        os.close(rfd)
        return bpf
    finally:
        lib.seccomp_release(ctx)


def load_seccomp(bpf_buf, n_insns):
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    prog = SockFprog(n_insns, ctypes.addressof(bpf_buf))
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


# ---------------------------------------------------------------------------- cgroups
