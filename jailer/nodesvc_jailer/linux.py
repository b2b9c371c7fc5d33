"""Thin ctypes wrappers for the Linux calls the jail needs that CPython 3.11's `os` lacks.

(`os.unshare`/`os.setns` arrived in 3.12; pivot_root, mount, capset and close_range have no
wrapper at all.) Every wrapper raises OSError with the call's name on failure.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
libc.syscall.restype = ctypes.c_long

# <sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
CLONE_NEWCGROUP = 0x02000000
CLONE_PARENT = 0x00008000
CLONE_CHILD_SETTID = 0x01000000
SIGCHLD = 17
# <sys/mount.h>
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_SLAVE, MS_PRIVATE = 0x1000, 0x4000, 1 << 19, 1 << 18
MNT_DETACH = 2
# <sys/prctl.h>
PR_SET_PDEATHSIG = 1
PR_CAPBSET_READ, PR_CAPBSET_DROP = 23, 24
PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS = 38, 39
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
PR_SET_DUMPABLE = 4
# x86-64 syscall numbers (the VMM is x86-64 only)
SYS_pivot_root = 155
SYS_capset = 126
SYS_close_range = 436
SYS_seccomp = 317
SYS_clone = 56
CLOSE_RANGE_UNSHARE = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


# A foreign call through PyDLL keeps the GIL held, as os.fork does across fork().
_pylibc = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_pylibc.syscall.restype = ctypes.c_long
_pylibc.pthread_self.restype = ctypes.c_void_p
# glibc (2.34 and later, x86-64) caches each thread's kernel tid in its `struct pthread`,
# here; fork() has the kernel write the child's tid there (CLONE_CHILD_SETTID).
# fork_with() does the same, after checking the field really holds the tid.
PTHREAD_TID_OFFSET = 720
_tid_checked: bool | None = None


def _tid_field_here() -> bool:
    addr = _pylibc.pthread_self() + PTHREAD_TID_OFFSET
    return ctypes.c_int.from_address(addr).value == threading.get_native_id()


def fork_with_supported() -> bool:
    """Whether fork_with() can keep glibc's cached tid right: the field is where we
    expect it, in this thread and in a new one (checked once)."""
    global _tid_checked
    if _tid_checked is None:
        other: list[bool] = []
        t = threading.Thread(target=lambda: other.append(_tid_field_here()))
        t.start()
        t.join()
        _tid_checked = _tid_field_here() and other == [True]
    return _tid_checked


def fork_with(flags: int) -> int:
    """fork(2) with clone flags (CLONE_PARENT, CLONE_NEWPID): the clone syscall between
    CPython's own fork hooks (PyOS_BeforeFork/AfterFork_*, what os.fork runs: the
    interpreter's locks, os.register_at_fork callbacks). Returns 0 in the child. Only in
    a single-threaded process (glibc's fork handlers do not run: no lock is held there)."""
    if not fork_with_supported():
        raise OSError(errno.ENOTSUP, "fork_with: glibc's thread descriptor is not laid out "
                      "as expected")
    tid = _pylibc.pthread_self() + PTHREAD_TID_OFFSET
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _pylibc.syscall(ctypes.c_long(SYS_clone),
                          ctypes.c_ulong(flags | CLONE_CHILD_SETTID | SIGCHLD),
                          ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_void_p(tid),
                          ctypes.c_ulong(0))
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone: {os.strerror(err)}")
    return pid


def _check(ret: int, what: str) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


def unshare(flags: int) -> None:
    _check(libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)   # noqa: E731
    _check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags),
                      enc(data)), f"mount {target}")


def umount2(target: str, flags: int = 0) -> None:
    _check(libc.umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(libc.syscall(ctypes.c_long(SYS_pivot_root), os.fsencode(new_root),
                        os.fsencode(put_old)), "pivot_root")


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    _check(libc.syscall(ctypes.c_long(SYS_close_range), ctypes.c_uint(first),
                        ctypes.c_uint(last), ctypes.c_uint(flags)), "close_range")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                             ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)), f"prctl({option})")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_cap_last: int | None = None


def cap_last_cap() -> int:
    """The highest capability number this kernel knows (read once per process tree)."""
    global _cap_last
    if _cap_last is None:
        try:
            with open("/proc/sys/kernel/cap_last_cap") as f:
                _cap_last = int(f.read())
        except OSError:     # already jailed (no /proc): probe the bounding set instead
            n = 0
            while libc.prctl(PR_CAPBSET_READ, ctypes.c_ulong(n + 1), 0, 0, 0) >= 0:
                n += 1
            _cap_last = n
    return _cap_last


def drop_all_capabilities() -> None:
    """Empty effective, permitted and inheritable (capset). The bounding and ambient sets
    are emptied before the uid change (that needs CAP_SETPCAP); see jail.drop_privileges."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(libc.syscall(ctypes.c_long(SYS_capset), ctypes.byref(hdr), data), "capset")
