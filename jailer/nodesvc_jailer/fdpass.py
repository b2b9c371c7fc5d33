"""File descriptors across the jail boundary: SCM_RIGHTS over a Unix socket.

The node opens what the VM needs (kernel, initrd, drives, TAP, /dev/kvm) and passes the
descriptors; the jailed VMM never needs a host path. The receiver gets its fds with
O_CLOEXEC set (MSG_CMSG_CLOEXEC), and a message whose fds did not all fit is refused
with every fd that did arrive closed, never half-delivered.
"""

from __future__ import annotations

import array
import os
import socket

MAX_FDS = 253           # the kernel's SCM_MAX_FD
MSG_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0x40000000)


class FdPassError(OSError):
    pass


def send_fds(sock: socket.socket, msg: bytes, fds: list[int] | tuple[int, ...]) -> int:
    """Send `msg` (at least one byte: the fds ride on it) with `fds`; returns bytes sent."""
    if not msg:
        raise ValueError("send_fds needs a non-empty message to carry the descriptors")
    if len(fds) > MAX_FDS:
        raise ValueError(f"at most {MAX_FDS} descriptors per message")
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sent = sock.sendmsg([msg], anc)
    if sent != len(msg):    # stream socket and a short write: the fds went with the first byte
        sock.sendall(msg[sent:])
    return len(msg)


def recv_fds(sock: socket.socket, bufsize: int = 65536,
             maxfds: int = MAX_FDS) -> tuple[bytes, list[int]]:
    """One message and the descriptors that came with it. b"" with [] means EOF."""
    fds = array.array("i")
    msg, anc, flags, _ = sock.recvmsg(bufsize, socket.CMSG_SPACE(maxfds * fds.itemsize),
                                      MSG_CMSG_CLOEXEC)
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise FdPassError(f"more than {maxfds} descriptors arrived; all were closed")
    return msg, list(fds)
