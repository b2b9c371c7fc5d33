"""Console output sinks and the console input reader.

Sinks never block the vCPU thread that calls `write`: output goes into a bounded
buffer that a writer thread drains; when the buffer is full bytes are dropped and
counted. That keeps a stalled terminal or pipe reader from freezing the guest.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

DEFAULT_LIMIT = 1 << 20
ESCAPE_PREFIX = 0x01  # Ctrl-A, then 'x' exits (like QEMU's -nographic)


class StdoutSink:
    """Bounded, non-blocking sink that writes to a file descriptor from its own thread."""

    def __init__(self, fd: int = 1, limit: int = DEFAULT_LIMIT):
        self.fd, self.limit = fd, limit
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0
        self.written = 0
        self._thread = threading.Thread(target=self._drain, name="console-out", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        with self._cond:
            room = self.limit - len(self._buf)
            if room < len(data):
                self.dropped += len(data) - max(room, 0)
                data = data[:max(room, 0)]
            if data:
                self._buf += data
                self._cond.notify()

    def _drain(self) -> None:
        while True:
            with self._cond:
                while not self._buf and not self._closed:
                    self._cond.wait()
                if not self._buf and self._closed:
                    return
                chunk, self._buf = bytes(self._buf), bytearray()
            try:
                view = memoryview(chunk)
                while view:
                    n = os.write(self.fd, view)
                    view = view[n:]
                self.written += len(chunk)
            except OSError:
                self.dropped += len(chunk)

    def close(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)


class CaptureSink:
    """Collects output in memory (tests, benchmarks) and signals when a marker appears."""

    def __init__(self, limit: int = 16 << 20, echo_fd: int | None = None):
        self.data = bytearray()
        self.limit = limit
        self.dropped = 0
        self._cond = threading.Condition()
        self.echo_fd = echo_fd

    def write(self, data: bytes) -> None:
        with self._cond:
            if len(self.data) + len(data) > self.limit:
                self.dropped += len(data)
                return
            self.data += data
            self._cond.notify_all()
        if self.echo_fd is not None:
            try:
                os.write(self.echo_fd, data)
            except OSError:
                pass

    def text(self) -> str:
        with self._cond:
            return self.data.decode("utf-8", "replace")

    def wait_for(self, marker: bytes, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: marker in self.data, timeout)


class ConsoleInput:
    """Reads an input fd on the event loop and feeds a console device.

    With `escape=True` the sequence Ctrl-A x asks the VMM to stop (terminal use);
    Ctrl-A Ctrl-A sends a literal Ctrl-A.
    """

    def __init__(self, loop, fd: int, feed: Callable[[bytes], None],
                 on_escape: Callable[[], None] | None = None, escape: bool = False):
        self.loop, self.fd, self.feed = loop, fd, feed
        self.on_escape, self.escape = on_escape, escape
        self._saw_prefix = False
        loop.add_reader(fd, self._readable)

    def _readable(self, _events: int) -> None:
        try:
            data = os.read(self.fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        if not data:  # EOF: stop watching, the guest keeps running
            self.loop.remove_reader(self.fd)
            return
        if self.escape:
            data = self._filter(data)
        if data:
            self.feed(data)

    def _filter(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            if self._saw_prefix:
                self._saw_prefix = False
                if b in (ord("x"), ord("X")):
                    if self.on_escape:
                        self.on_escape()
                    return bytes(out)
                out.append(b)
            elif b == ESCAPE_PREFIX:
                self._saw_prefix = True
            else:
                out.append(b)
        return bytes(out)
