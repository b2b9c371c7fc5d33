"""Host-side Unix-socket helpers: the VM's listening socket and the CONNECT handshake."""

from __future__ import annotations

import os
import socket
import stat

from .packet import U32

MAX_LINE = 32  # "CONNECT 4294967295\n" is 19 bytes; anything longer is not a CONNECT line
WAIT = object()  # handshake outcome: the line is not complete yet


def listen(path: str, backlog: int = 128) -> tuple[socket.socket, int]:
    """Bind and listen on `path`, replacing a stale socket file; returns (socket, inode)."""
    try:  # a socket left by an earlier VMM would make bind fail; other files are not ours
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                         | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        sock.listen(backlog)
        return sock, os.lstat(path).st_ino
    except OSError:
        sock.close()
        raise


def unlink_if_ours(path: str, inode: int) -> None:
    """Remove the socket file unless someone else has since put another one there."""
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass


def parse_connect(line: bytes) -> int | None:
    """The port of a `CONNECT <port>` line, or None when it is anything else."""
    try:
        words = line.decode("ascii").split()
    except UnicodeDecodeError:
        return None
    if len(words) != 2 or words[0].upper() != "CONNECT" or not words[1].isdigit():
        return None
    port = int(words[1])
    return port if port <= U32 else None


class Handshake:
    """A host connection that has not finished its `CONNECT <port>\\n` line yet."""

    __slots__ = ("sock", "line", "deadline")

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock, self.line, self.deadline = sock, b"", deadline

    def read(self):
        """The requested port, WAIT for more bytes, or None when the peer must be dropped.

        Peeks first, so bytes after the newline stay in the socket as stream data
        for the guest; bytes before it are consumed, so level-triggered epoll
        does not spin on a half-sent line.
        """
        try:
            data = self.sock.recv(MAX_LINE - len(self.line), socket.MSG_PEEK)
        except BlockingIOError:
            return WAIT
        except OSError:
            return None
        nl = data.find(b"\n")
        if nl < 0:
            if not data:
                return None  # EOF before a whole line
            self.line += self.sock.recv(len(data))
            return None if len(self.line) >= MAX_LINE else WAIT
        return parse_connect(self.line + self.sock.recv(nl + 1))
