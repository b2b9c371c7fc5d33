"""A one-shot timer watched by the VMM event loop (a core `nodesvc.vmm.timerfd.TimerFd`)."""

from __future__ import annotations

from typing import Any, Callable

from nodesvc.vmm import timerfd as _core


class TimerFd:
    """Calls `on_expire()` on the event-loop thread `delay_ns` after `arm()`.

    Created once per limiter and registered with the loop for its whole life
    (Firecracker does the same: a later update() may enable limiting, and a
    seccomp filter may forbid creating fds by then).
    """

    def __init__(self, event_loop: Any, on_expire: Callable[[], None]):
        self._on_expire = on_expire
        self._loop = event_loop
        self._timer = _core.TimerFd()
        self.fd = self._timer.fd
        if event_loop is not None:
            event_loop.add_reader(self.fd, self._readable)

    def arm(self, delay_ns: int) -> None:
        """One-shot, relative; replaces any pending expiry."""
        # An all-zero it_value would *disarm* the timer and leave the limiter blocked forever.
        self._timer.set(max(1, delay_ns))

    def _readable(self, _events: int = 0) -> None:
        if self._timer.clear():     # False: spurious (re-armed meanwhile), nothing expired
            self._on_expire()

    def close(self) -> None:
        if self.fd < 0:
            return
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
        self._timer.close()
        self.fd = -1
