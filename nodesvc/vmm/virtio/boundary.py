"""The error boundary around a virtio device: guest-controlled input fails the device,
never the VM.

Everything a device does runs on one of a few entry points: a queue kick, a config-space
access, its activation or reset (all through the transport), or a callback on the event
loop — host-side socket or TAP readiness, a timer, a rate limiter's wake-up, a deferred
call. The builder gives every device its own `DeviceLoop`, a view of the VM's event loop
whose callbacks run inside the boundary. Any exception escaping one of them puts that
device into NEEDS_RESET (a config-change interrupt; the driver may reset it and start
over) and the VM runs on. While a device is failed its fds are left out of the epoll set
and its deferred calls are dropped, so a TAP that stays readable cannot spin the loop;
a driver reset brings them back.

Failures are counted without bound and logged with a rate limit (a burst, then a
summary of what was suppressed), so a guest that fails its devices in a loop can grow
neither the VMM's memory nor its log.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .queue import VirtqueueError

log = logging.getLogger("nodesvc.vmm.virtio")

MAX_REASON = 200      # a failure reason is guest-influenced text: keep it short


class LogLimiter:
    """At most `burst` lines per `period` seconds; counts what it held back."""

    def __init__(self, burst: int = 5, period: float = 10.0, clock=time.monotonic):
        self.burst, self.period, self.clock = burst, period, clock
        self._window_start = -period
        self._used = 0
        self.suppressed = 0

    def allow(self) -> tuple[bool, int]:
        """(may log now, how many were suppressed since the last allowed line)."""
        now = self.clock()
        if now - self._window_start >= self.period:
            self._window_start, self._used = now, 0
        if self._used < self.burst:
            self._used += 1
            held, self.suppressed = self.suppressed, 0
            return True, held
        self.suppressed += 1
        return False, 0


class ErrorBoundary:
    """One device's failure accounting; `on_fail(reason)` moves it to NEEDS_RESET."""

    def __init__(self, name: str, on_fail: Callable[[str], None] | None = None):
        self.name, self.on_fail = name, on_fail
        self.failures = 0           # every failure, logged or not
        self.failed = False         # until the driver resets the device
        self.limiter = LogLimiter()
        self._loops: list[DeviceLoop] = []

    def describe(self, e: BaseException) -> str:
        text = str(e) if isinstance(e, VirtqueueError) else f"{type(e).__name__}: {e}"
        return text[:MAX_REASON]

    def fail(self, reason: str) -> None:
        """Record the failure, then move the device to NEEDS_RESET (`on_fail`)."""
        reason = reason[:MAX_REASON]
        self.record(reason)
        if self.on_fail is not None:
            self.on_fail(reason)

    def record(self, reason: str) -> None:
        """Count, log (rate-limited) and suspend the device's fds; no state change."""
        self.failures += 1
        first = not self.failed
        self.failed = True
        ok, held = self.limiter.allow()
        if ok and first:
            more = f" ({held} more device errors were not logged)" if held else ""
            log.warning("%s: device needs reset: %s%s", self.name, reason[:MAX_REASON], more)
        if first:
            for loop in self._loops:
                loop.suspend()

    def recovered(self) -> None:
        """The driver reset the device: its fds and deferred calls run again."""
        if self.failed:
            self.failed = False
            for loop in self._loops:
                loop.resume()

    def guard(self, fn: Callable, *args):
        """Run a device entry point; an exception fails the device instead of escaping."""
        try:
            return fn(*args)
        except Exception as e:
            log.debug("%s: device error", self.name, exc_info=True)
            self.fail(self.describe(e))
            return None


class DeviceLoop:
    """One device's view of the VM's event loop: the same loop, with every callback the
    device registers run inside its ErrorBoundary.

    Suspension races with the device's own calls (a failure on the loop thread, a driver
    reset on a vCPU thread), so one lock orders them and `_live` tracks exactly which fds
    are in the loop's epoll set."""

    def __init__(self, loop, boundary: ErrorBoundary):
        self._loop, self.boundary = loop, boundary
        self._readers: dict[int, Callable[[int], None]] = {}
        self._live: set[int] = set()
        self._suspended = False
        self._lock = threading.Lock()
        boundary._loops.append(self)

    def add_reader(self, fd: int, callback: Callable[[int], None]) -> None:
        """Like the loop's; adding an fd again replaces its callback."""
        with self._lock:
            self._readers[fd] = callback
            if not self._suspended:
                self._register(fd)

    def remove_reader(self, fd: int) -> None:
        with self._lock:
            self._readers.pop(fd, None)
            self._unregister(fd)

    def call_soon(self, fn: Callable[[], None]) -> None:
        self._loop.call_soon(lambda: None if self._suspended else self.boundary.guard(fn))

    def _register(self, fd: int) -> None:
        if fd not in self._live:
            self._loop.add_reader(fd, self._wrap(fd))
            self._live.add(fd)

    def _unregister(self, fd: int) -> None:
        if fd in self._live:
            self._live.discard(fd)
            self._loop.remove_reader(fd)

    def _wrap(self, fd: int) -> Callable[[int], None]:
        def run(events: int) -> None:
            cb = self._readers.get(fd)
            if cb is not None and not self._suspended:
                self.boundary.guard(cb, events)
        return run

    def suspend(self) -> None:
        with self._lock:
            self._suspended = True
            for fd in list(self._live):
                self._unregister(fd)

    def resume(self) -> None:
        with self._lock:
            if self._suspended:
                self._suspended = False
                for fd in list(self._readers):
                    self._register(fd)

    def __getattr__(self, name):     # anything else (start, stop, run_once...) is the loop's
        return getattr(self._loop, name)
