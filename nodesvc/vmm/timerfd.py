"""CLOCK_MONOTONIC timerfds for devices and rate limiters on the event loop.

`os.timerfd_create` exists only from Python 3.13, so libc is called through cffi
in ABI mode (no compiler), as the KVM bindings do.
"""

from __future__ import annotations

import os

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
    """A non-blocking timerfd: readable when it expires; `clear()` consumes the expiry."""

    def __init__(self) -> None:
        self.fd = _libc.timerfd_create(CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            err = _ffi.errno
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")

    def set(self, value_ns: int, interval_ns: int = 0) -> None:
        """Expire `value_ns` from now (then every `interval_ns`); 0 disarms."""
        spec = _ffi.new("struct itimerspec *")
        spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(value_ns, NS_PER_S)
        spec.it_interval.tv_sec, spec.it_interval.tv_nsec = divmod(interval_ns, NS_PER_S)
        if _libc.timerfd_settime(self.fd, 0, spec, _ffi.NULL) < 0:
            err = _ffi.errno
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def clear(self) -> bool:
        """Consume pending expiries; False when there were none (spurious wake-up)."""
        try:
            os.read(self.fd, 8)
            return True
        except BlockingIOError:
            return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
