"""seccomp filters per VMM thread kind, compiled once with libseccomp, loaded per thread.

Kinds (Firecracker has vmm/api/vcpu; ours follow the VMM's threads):
- "vmm": the process baseline, loaded by `Jail.enter` before any thread exists, so no
  thread is ever unfiltered (threads inherit it). It is the union of the others plus what
  building a VM needs (creating KVM objects, opening the jail's device nodes).
- "vcpu": loaded first thing on each vCPU thread: KVM_RUN and the GETs used to report an
  exit; the device data path (a queue kick handled inline); no opens, no sockets.
- "loop": the device event loop: epoll, eventfds, timerfds, the data path, and AF_UNIX
  sockets for vsock; no KVM ioctls.
- "control": the main thread once the VM is built and its threads started (Firecracker's
  order: loaded last, so the vCPU/loop threads made earlier don't inherit it): the control
  socket (AF_UNIX), thread creation for helpers, the vCPU kick signal, opens inside the jail.
Filters stack (the strictest action wins), so a vCPU thread runs under vmm AND vcpu.

Every list was measured (jailer/tools/measure_syscalls.py: strace -ff of the real VMM
process driving a tiny guest, see docs/security.md) and completed from the facts file and
the device code (virtio data paths a tiny guest does not exercise).

Default action TRAP: the syscall is not executed, the thread gets SIGSYS and the C handler
in `_sigsys` writes the syscall's name to the jail's fault file and exits 148. Changing
that handler is itself forbidden (rt_sigaction(SIGSYS) kills the process outright), and
blocking SIGSYS can't suppress it (the kernel then kills the process with SIGSYS).
"""

from __future__ import annotations

import os
import tempfile
import threading

import pyseccomp as sc

from nodesvc.vmm.kvm import ioctls as kvm   # read-only: the numbers the VMM issues

from . import _sigsys     # imported now: nothing can be imported once jailed

KINDS = ("vmm", "vcpu", "loop", "control")
EXIT_CODE = 148
SIGABRT, SIGUSR1, SIGSYS = 6, 10, 31
AF_UNIX = 1
PROT_EXEC = 4
CLONE_THREAD = 0x10000
ENOSYS = 38
PR_SET_NO_NEW_PRIVS, SECCOMP_SET_MODE_FILTER = 38, 1
# fcntl commands CPython uses: F_DUPFD, F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC
FCNTL_CMDS = (0, 1, 2, 3, 4, 1030)
# tty/fd ioctls CPython issues on ordinary fds: TCGETS (isatty, open()), TIOCGWINSZ,
# FIONBIO (socket.setblocking), FIOCLEX, FIONREAD
FD_IOCTLS = (0x5401, 0x5413, 0x5421, 0x5451, 0x541B)
# TAP set-up done by the VMM on an fd the node opened (TUNSETIFF stays with the node)
TUNSETOFFLOAD, TUNSETVNETHDRSZ = 0x400454D0, 0x400454D8
TUN_IOCTLS = (TUNSETOFFLOAD, TUNSETVNETHDRSZ)
VCPU_IOCTLS = (kvm.KVM_RUN, kvm.KVM_GET_REGS, kvm.KVM_GET_SREGS, kvm.KVM_TRANSLATE)
BUILD_IOCTLS = tuple(sorted(set(kvm.TABLE.values())))
# CreateSnapshot on the paused VM (main thread): the GETs of nodesvc.vmm.snapshot.cpu
SNAPSHOT_IOCTLS = (kvm.KVM_CHECK_EXTENSION, kvm.KVM_GET_MSR_INDEX_LIST, kvm.KVM_GET_MP_STATE,
                   kvm.KVM_GET_FPU, kvm.KVM_GET_XSAVE, kvm.KVM_GET_XSAVE2, kvm.KVM_GET_XCRS,
                   kvm.KVM_GET_DEBUGREGS, kvm.KVM_GET_LAPIC, kvm.KVM_GET_TSC_KHZ,
                   kvm.KVM_GET_CPUID2, kvm.KVM_GET_MSRS, kvm.KVM_GET_VCPU_EVENTS,
                   kvm.KVM_GET_PIT2, kvm.KVM_GET_CLOCK, kvm.KVM_GET_IRQCHIP)

# A rule is a tuple of (arg index, op, a[, b]) conditions ANDed; a syscall's rules are ORed;
# () allows it unconditionally.
ALWAYS: tuple = ()


def _eq(arg: int, value: int) -> tuple:
    return (arg, sc.MASKED_EQ, 0xFFFFFFFF, value)   # compare as 32-bit ints (ioctl cmds)


def _one_of(arg: int, values) -> list[tuple]:
    return [(_eq(arg, v),) for v in values]


_NO_EXEC = [((2, sc.MASKED_EQ, PROT_EXEC, 0),)]     # no new executable memory, ever

COMMON: dict[str, list[tuple]] = {
    # CPython's own needs and thread start/exit (measured), with argument checks where a
    # call could widen what the process can do.
    **{n: [ALWAYS] for n in (
        "read", "write", "close", "futex", "munmap", "mremap", "madvise", "brk",
        "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "gettid", "getpid", "exit",
        "exit_group", "sched_yield", "clock_gettime", "clock_getres", "gettimeofday",
        "clock_nanosleep", "nanosleep", "getrandom", "rseq", "set_robust_list",
        "restart_syscall", "fstat", "newfstatat", "lseek", "getuid", "geteuid", "getgid",
        "getegid", "getppid")},
    "mmap": _NO_EXEC,
    "mprotect": _NO_EXEC,
    "rt_sigaction": [((0, sc.NE, SIGSYS),)],
    "fcntl": _one_of(1, FCNTL_CMDS),
    "tgkill": [((2, sc.EQ, SIGABRT),)],     # abort() only; the kick is the control's
    # a thread stacking its own, stricter filter (filters can only be added, never removed)
    "prctl": [((0, sc.EQ, PR_SET_NO_NEW_PRIVS),)],
    "seccomp": [((0, sc.EQ, SECCOMP_SET_MODE_FILTER), (1, sc.EQ, 0))],
}

DATA_PATH = {n: [ALWAYS] for n in (
    "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2", "readv", "writev",
    "fdatasync", "fsync",
    "sendmsg", "recvmsg", "sendto", "recvfrom", "eventfd2", "epoll_ctl",
    "timerfd_settime", "timerfd_gettime")}

UNIX_SOCKETS = {
    "socket": [((0, sc.EQ, AF_UNIX),)],
    "socketpair": [((0, sc.EQ, AF_UNIX),)],
    **{n: [ALWAYS] for n in ("connect", "accept4", "bind", "listen", "getsockname",
                             "getpeername", "getsockopt", "setsockopt", "shutdown")},
}

EVENTS = {n: [ALWAYS] for n in ("epoll_wait", "epoll_pwait", "poll", "ppoll", "timerfd_create",
                                "epoll_create1", "pipe2")}

RULES: dict[str, dict[str, list[tuple]]] = {
    # A vCPU thread activates and resets devices (the driver's status write is an MMIO
    # exit, as in Firecracker): the net device sets the TAP's offloads to what was
    # negotiated, on a TAP fd the node attached.
    "vcpu": {**COMMON, **DATA_PATH, "ioctl": _one_of(1, VCPU_IOCTLS + (TUNSETOFFLOAD,))},
    # A snapshot restore activates the devices on the event loop instead
    # (nodesvc/vmm/snapshot/devices.py): the net device sets the TAP's offloads there.
    "loop": {**COMMON, **DATA_PATH, **UNIX_SOCKETS, **EVENTS,
             "ioctl": _one_of(1, FD_IOCTLS + (TUNSETOFFLOAD,))},
    "control": {**COMMON, **DATA_PATH, **UNIX_SOCKETS, **EVENTS,
                "ioctl": _one_of(1, FD_IOCTLS + VCPU_IOCTLS + SNAPSHOT_IOCTLS),
                # helper threads only: a clone without CLONE_THREAD (fork) is refused
                "clone": [((0, sc.MASKED_EQ, CLONE_THREAD, CLONE_THREAD),)],
                "tgkill": [((2, sc.EQ, SIGABRT),), ((2, sc.EQ, SIGUSR1),)],
                # paths resolve inside the jail's root, which holds only what the VM needs
                **{n: [ALWAYS] for n in ("openat", "rename", "unlink", "ftruncate")}},
}
# clone3 passes its flags in memory, out of a filter's reach: answer ENOSYS so glibc falls
# back to clone(2), whose flags are checked.
ERRNO_RULES = {"clone3": ENOSYS}


def _union(*rule_sets: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for rules in rule_sets:
        for name, conds in rules.items():
            have = out.setdefault(name, [])
            if ALWAYS in have:
                continue
            if ALWAYS in conds:
                out[name] = [ALWAYS]
            else:
                have.extend(c for c in conds if c not in have)
    return out


RULES["vmm"] = _union(*RULES.values(), {
    "ioctl": _one_of(1, BUILD_IOCTLS + TUN_IOCTLS),
    **{n: [ALWAYS] for n in ("access", "readlink", "getdents64", "sysinfo", "prlimit64", "mincore",
                             "memfd_create", "getcwd", "uname", "sched_getaffinity")},
})


def rules(kind: str) -> dict[str, list[tuple]]:
    if kind not in RULES:
        raise ValueError(f"unknown thread kind {kind!r} (one of {', '.join(KINDS)})")
    return RULES[kind]


def build(kind: str, default_action: int = sc.TRAP) -> sc.SyscallFilter:
    f = sc.SyscallFilter(default_action)
    f.set_attr(sc.Attr.CTL_NNP, 0)      # we set NO_NEW_PRIVS ourselves, per thread
    for name, conds in rules(kind).items():
        for cond in conds:
            f.add_rule(sc.ALLOW, name, *(sc.Arg(*c) for c in cond))
    for name, err in ERRNO_RULES.items():
        f.add_rule(sc.ERRNO(err), name)
    # Tampering with the reporter is never a mistake worth a report: kill at once.
    f.add_rule(sc.KILL_PROCESS, "rt_sigaction", sc.Arg(0, sc.EQ, SIGSYS))
    return f


_bpf: dict[str, bytes] = {}
_lock = threading.Lock()


def compile_bpf(kind: str) -> bytes:
    """The filter as a BPF program (cached: compile in the zygote, load in each child)."""
    with _lock:
        if kind not in _bpf:
            with tempfile.TemporaryFile() as tmp:
                build(kind).export_bpf(tmp)
                tmp.seek(0)
                _bpf[kind] = tmp.read()
        return _bpf[kind]


def precompile() -> None:
    for k in KINDS:
        compile_bpf(k)
    syscall_names()


_names: list[str] | None = None


def syscall_names(limit: int = 512) -> list[str]:
    """Syscall number -> name for the native arch ("" where there is none)."""
    global _names
    if _names is None:
        arch, out = sc.system_arch(), []
        for nr in range(limit):
            try:
                out.append(sc.resolve_syscall(arch, nr).decode())
            except ValueError:
                out.append("")
        _names = out
    return _names


def syscall_name(nr: int) -> str:
    names = syscall_names()
    return names[nr] if 0 <= nr < len(names) and names[nr] else f"syscall {nr}"


def arm(report_fd: int) -> None:
    """Install the SIGSYS reporter (process-wide), writing to `report_fd`."""
    _sigsys.arm(report_fd, syscall_names())


def install(kind: str) -> None:
    """Load `kind`'s filter on the calling thread only (call `arm` once before)."""
    _sigsys.load(compile_bpf(kind), kind)


def thread_hooks() -> dict:
    """What MicroVm(thread_hooks=...) takes: each fn runs first thing on its thread."""
    return {"vcpu": lambda: install("vcpu"), "loop": lambda: install("loop")}


def status_of(pid: int | str = "self") -> dict[str, str]:
    """Seccomp, NoNewPrivs, CapEff, Uid... of a process, from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


__all__ = ["KINDS", "EXIT_CODE", "arm", "install", "compile_bpf", "precompile", "rules",
           "syscall_name", "syscall_names", "thread_hooks", "status_of", "os"]
