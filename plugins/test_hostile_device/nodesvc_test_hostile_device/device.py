"""TEST ONLY: the hostile device. It stands for a device model the guest has taken over:
code execution inside the VMM process, on the thread the bug is on.

The guest writes one command byte to port PORT; the device attempts that act on the vCPU
thread that made the exit (or, for acts marked "loop", on the device event-loop thread,
where AF_UNIX sockets are allowed). An act the jail *denies* (an errno) is reported on the
console as `HOSTILE <cmd> DENIED <what>`; an act that seccomp forbids never returns (the
SIGSYS reporter ends the process); an act that *succeeds* prints `HOSTILE <cmd> ALLOWED`,
which a test must treat as a hole.

Targets come from NODESVC_HOSTILE_TARGETS (JSON, read when the device is attached):
  dir       a host directory the acts try to write into (nothing may appear there)
  pid       a host process the acts try to kill or trace (it must survive, untraced)
  tcp_port  a TCP listener on the host's 127.0.0.1 (it must accept nothing)
  node_socket, unix_socket   host Unix sockets (path) the VMM tries to connect to
  abstract  an abstract Unix socket name on the host (netns-scoped)

Everything used after the jail is imported and resolved here, at import time: a jailed
VMM has no Python runtime on disk.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import socket
import threading

PORT = 0x5F0
SYS_ptrace, SYS_tgkill = 101, 234
PTRACE_ATTACH = 16
MEMORY_CHUNK = 32 << 20
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p)


def _check(ret: int) -> int:
    if ret < 0:
        raise OSError(ctypes.get_errno(), "")
    return ret


# -- the acts: each returns normally only if it was allowed ---------------------------------
def open_host_file(t: dict) -> None:
    os.close(os.open(os.path.join(t["dir"], "opened"), os.O_WRONLY | os.O_CREAT, 0o600))


def execve(t: dict) -> None:
    os.execv("/bin/sh", ["/bin/sh", "-c", f"touch {t['dir']}/executed"])


def socket_inet(t: dict) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        s.connect(("127.0.0.1", t["tcp_port"]))


def _connect_unix(address) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        s.connect(address)


def connect_node_socket(t: dict) -> None:
    _connect_unix(t["node_socket"])


def connect_unix_socket(t: dict) -> None:
    _connect_unix(t["unix_socket"])


def connect_abstract(t: dict) -> None:
    _connect_unix("\0" + t["abstract"])


def ptrace(t: dict) -> None:
    _check(_libc.syscall(ctypes.c_long(SYS_ptrace), ctypes.c_long(PTRACE_ATTACH),
                         ctypes.c_long(t["pid"]), None, None))


def mount(t: dict) -> None:
    _check(_libc.mount(b"none", os.fsencode(t["dir"]), b"tmpfs", 0, None))


def kill(t: dict) -> None:
    os.kill(t["pid"], signal.SIGKILL)


def tgkill(t: dict) -> None:
    # The filters allow tgkill(SIGABRT) (abort()); only the PID namespace stops this one.
    _check(_libc.syscall(ctypes.c_long(SYS_tgkill), ctypes.c_long(t["pid"]),
                         ctypes.c_long(t["pid"]), ctypes.c_long(signal.SIGABRT)))


def fork(t: dict) -> None:
    for _ in range(t.get("pids", 64) + 8):
        if os.fork() == 0:
            signal.pause()


def threads(t: dict) -> None:
    for _ in range(t.get("pids", 64) + 8):
        threading.Thread(target=signal.pause, daemon=True).start()


_hoard: list[bytearray] = []


def memory(t: dict) -> None:
    while True:     # each chunk is zeroed, so every page is really allocated
        _hoard.append(bytearray(MEMORY_CHUNK))


# command byte -> (act, thread it runs on)
ACTS = {
    "o": (open_host_file, "vcpu"),
    "e": (execve, "vcpu"),
    "i": (socket_inet, "vcpu"),
    "I": (socket_inet, "loop"),
    "u": (connect_node_socket, "loop"),
    "U": (connect_unix_socket, "loop"),
    "a": (connect_abstract, "loop"),
    "p": (ptrace, "vcpu"),
    "m": (mount, "vcpu"),
    "k": (kill, "vcpu"),
    "t": (tgkill, "vcpu"),
    "f": (fork, "vcpu"),
    "T": (threads, "vcpu"),
    "M": (memory, "vcpu"),
}


class HostileDevice:
    """One byte-wide PIO port. Reads return 0x4F ('O'): the guest can see it exists."""

    def __init__(self, ctx, targets: dict):
        self.ctx, self.targets = ctx, targets
        self.loop = ctx.event_loop

    def read(self, offset: int, size: int) -> int:
        return 0x4F

    def write(self, offset: int, size: int, value: int) -> None:
        cmd = chr(value & 0xFF)
        if cmd not in ACTS:
            self._say(cmd, "UNKNOWN")
            return
        act, where = ACTS[cmd]
        if where == "loop":
            self.loop.call_soon(lambda: self._attempt(cmd, act))
        else:
            self._attempt(cmd, act)

    def _attempt(self, cmd: str, act) -> None:
        try:
            act(self.targets)
        except OSError as e:
            self._say(cmd, "DENIED " + (errno.errorcode.get(e.errno, str(e.errno))
                                        if e.errno else type(e).__name__))
            return
        self._say(cmd, "ALLOWED")

    def _say(self, cmd: str, what: str) -> None:
        self.ctx.console_out.write(f"HOSTILE {cmd} {what}\n".encode())


def targets_from_env() -> dict:
    raw = os.environ.get("NODESVC_HOSTILE_TARGETS")
    return json.loads(raw) if raw else {}
