"""A periodic timer for the muxer's timeouts (a core `nodesvc.vmm.timerfd.TimerFd`)."""

from __future__ import annotations

from nodesvc.vmm.timerfd import TimerFd


class TickTimer:
    """Readable every `period` seconds while armed; `consume()` clears the readiness."""

    def __init__(self, period: float):
        self.period = period
        self.armed = False
        self._timer = TimerFd()
        self.fd = self._timer.fd

    def _set(self, seconds: float) -> None:
        ns = int(seconds * 1e9)
        self._timer.set(ns, ns)

    def arm(self) -> None:
        if not self.armed:
            self._set(self.period)
            self.armed = True

    def disarm(self) -> None:
        if self.armed:
            self._set(0.0)  # a zero it_value stops the timer
            self.armed = False

    def consume(self) -> None:
        self._timer.clear()

    def close(self) -> None:
        self._timer.close()
        self.fd = -1
