"""CLOCK_MONOTONIC timerfds for devices and rate limiters on the event loop.

`os.timerfd_create` exists only from Python 3.13, so libc is called through cffi
in ABI mode (no compiler), as the KVM bindings do.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from .cffi_cache import load


def _declare(ffi) -> None:
    ffi.cdef("""
    struct timespec { long tv_sec; long tv_nsec; };
    struct itimerspec { struct timespec it_interval; struct timespec it_value; };
    int timerfd_create(int clockid, int flags);
    int timerfd_settime(int fd, int flags, const struct itimerspec *new_value,
                        struct itimerspec *old_value);
    """)


_ffi = load(__name__, __file__, _declare)
_libc = _ffi.dlopen(None)

CLOCK_MONOTONIC = 1
NS_PER_S = 1_000_000_000


class TimerFd:
    """A non-blocking timerfd: readable when it expires; `clear()` consumes the expiry.

    The one timer of the VMM and its plugins. Given an `event_loop` and `on_expire`, it
    joins the loop for its whole life and calls `on_expire()` there on every expiry
    (rate limiters: created once per limiter, as Firecracker does, since a seccomp filter
    may forbid creating fds later). Without them its `fd` is the caller's to watch (the
    vsock muxer puts it in its own epoll set).
    """

    def __init__(self, event_loop: Any = None, on_expire: Callable[[], None] | None = None):
        self.fd = _libc.timerfd_create(CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            err = _ffi.errno
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self.period_ns = 0          # nonzero while a periodic timer runs
        self._loop, self._on_expire = event_loop, on_expire
        if event_loop is not None and on_expire is not None:
            event_loop.add_reader(self.fd, self._readable)
        else:
            self._loop = None

    def set(self, value_ns: int, interval_ns: int = 0) -> None:
        """Expire `value_ns` from now (then every `interval_ns`); 0 disarms."""
        spec = _ffi.new("struct itimerspec *")
        spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(value_ns, NS_PER_S)
        spec.it_interval.tv_sec, spec.it_interval.tv_nsec = divmod(interval_ns, NS_PER_S)
        if _libc.timerfd_settime(self.fd, 0, spec, _ffi.NULL) < 0:
            err = _ffi.errno
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")
        self.period_ns = interval_ns if value_ns else 0

    def arm(self, delay_ns: int) -> None:
        """One-shot, relative; replaces any pending expiry."""
        # An all-zero it_value would *disarm* the timer instead of firing at once.
        self.set(max(1, delay_ns))

    def start_periodic(self, period_ns: int) -> None:
        """Expire every `period_ns`; while already running at that period, leave it be
        (so frequent callers do not keep pushing the next tick back)."""
        if self.period_ns != period_ns:
            self.set(period_ns, period_ns)

    def disarm(self) -> None:
        self.set(0)

    def clear(self) -> bool:
        """Consume pending expiries; False when there were none (spurious wake-up)."""
        try:
            os.read(self.fd, 8)
            return True
        except BlockingIOError:
            return False

    def _readable(self, _events: int = 0) -> None:
        if self.clear():     # False: spurious (re-armed meanwhile), nothing expired
            self._on_expire()

    def close(self) -> None:
        if self.fd < 0:
            return
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1
