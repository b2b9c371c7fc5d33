"""Reading a VMM's console, log and metrics FIFOs into its fan-outs, without ever blocking.

The FIFOs are opened O_RDWR on this side too, so a reader never sees EOF while the VMM is
being restarted around and the pipe contents survive a node service restart. A guest
writes its console one byte per PIO exit, and so does the VMM into the FIFO: the console
is read at most every CONSOLE_BATCH_S, so a subscriber gets one message per batch rather
than one per byte (which cost ~10x the CPU and slowed the guest down with it).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os

from .fanout import Fanout

CONSOLE_BATCH_S = 0.002     # the console pipe holds 256 KiB: far more than 2 ms of output
KINDS = (("console", None), ("log", "log"), ("metrics", "metrics"))


class FifoReaders:
    def __init__(self, loop: asyncio.AbstractEventLoop, paths, console: Fanout[bytes],
                 logs: Fanout[dict]):
        self._loop, self.paths, self.console, self.logs = loop, paths, console, logs
        self._fds: dict[str, int] = {}
        self._partial: dict[str, bytes] = {}
        self._console_batch: asyncio.TimerHandle | None = None

    def open(self) -> None:
        for name, kind in KINDS:
            fd = os.open(getattr(self.paths, name), os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            self._fds[name] = fd
            if kind is None:
                self._loop.add_reader(fd, self._console_readable)
            else:
                self._loop.add_reader(fd, self._read, name, kind)

    def drain(self) -> None:
        """Read whatever is in the pipes now (the last words of a VMM that ended)."""
        for name, kind in KINDS:
            self._read(name, kind)

    def close(self) -> None:
        if self._console_batch is not None:
            self._console_batch.cancel()
            self._console_batch = None
        for fd in self._fds.values():
            self._loop.remove_reader(fd)
            os.close(fd)
        self._fds.clear()

    def _console_readable(self) -> None:
        self._loop.remove_reader(self._fds["console"])     # until the batch is read
        self._console_batch = self._loop.call_later(CONSOLE_BATCH_S, self._console_drain)

    def _console_drain(self) -> None:
        self._console_batch = None
        fd = self._fds.get("console")
        if fd is not None:
            self._read("console", None)
            self._loop.add_reader(fd, self._console_readable)

    def _read(self, name: str, kind: str | None) -> None:
        fd = self._fds.get(name)
        while fd is not None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno != errno.EINTR:
                    return
                continue
            if not data:
                return
            if kind is None:
                self.console.publish(data)
                continue
            buf = self._partial.get(name, b"") + data
            *lines, self._partial[name] = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    self.logs.publish(_record(kind, line))


def _record(kind: str, line: bytes) -> dict:
    try:
        rec = json.loads(line)
        if not isinstance(rec, dict):
            raise ValueError
    except ValueError:  # not JSON: keep the text rather than lose it
        rec = {"level": "INFO", "logger": "vmm.raw",
               "message": line.decode("utf-8", "replace")}
        kind = "log"
    rec["kind"] = kind
    return rec
