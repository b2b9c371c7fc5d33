"""The VMM's device event loop: one epoll thread for fd-driven device work.

Callbacks run on the loop thread and must not block. `call_soon` is safe from any
thread (it wakes the loop through an eventfd). A callback that raises is reported
through `on_error` (the VM turns it into a DEVICE_ERROR exit) instead of killing
the loop silently.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import threading
from typing import Callable

log = logging.getLogger("nodesvc.vmm.eventloop")


class EventLoop:
    def __init__(self, on_error: Callable[[BaseException], None] | None = None,
                 on_start: Callable[[], None] | None = None):
        self._ep = select.epoll()
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._pending: collections.deque[Callable[[], None]] = collections.deque()
        self._ep.register(self._wake, select.EPOLLIN)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.on_error = on_error
        self.on_start = on_start    # first thing on the loop thread (seccomp, in a jail)

    def add_reader(self, fd: int, callback: Callable[[int], None]) -> None:
        """Call `callback(events)` whenever `fd` is readable (level-triggered)."""
        self._handlers[fd] = callback
        self._ep.register(fd, select.EPOLLIN)

    def remove_reader(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            try:
                self._ep.unregister(fd)
            except (OSError, ValueError):
                pass

    def call_soon(self, fn: Callable[[], None]) -> None:
        self._pending.append(fn)
        os.eventfd_write(self._wake, 1)

    def start(self, name: str = "vmm-events") -> None:
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        os.eventfd_write(self._wake, 1)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def close(self) -> None:
        self.stop()
        self._ep.close()
        os.close(self._wake)

    def _dispatch(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # a device bug must end the VM cleanly, not the thread
            log.exception("event-loop callback failed")
            if self.on_error is not None:
                self.on_error(e)

    def _run(self) -> None:
        if self.on_start is not None:
            self.on_start()
        while not self._stopping:
            try:
                events = self._ep.poll(1.0)
            except InterruptedError:
                continue
            for fd, ev in events:
                if fd == self._wake:
                    try:
                        os.eventfd_read(self._wake)
                    except BlockingIOError:
                        pass
                    while self._pending:
                        self._dispatch(self._pending.popleft())
                    continue
                handler = self._handlers.get(fd)
                if handler is not None:
                    self._dispatch(handler, ev)
