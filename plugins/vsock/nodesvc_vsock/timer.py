"""A periodic CLOCK_MONOTONIC timerfd for the muxer's timeouts.

`os.timerfd_create` only exists from Python 3.13, so libc is called through cffi
in ABI mode (no compiler), as nodesvc.vmm.kvm does for ioctls.
"""

from __future__ import annotations

import os

import cffi

_ffi = cffi.FFI()
_ffi.cdef("""
struct timespec { long tv_sec; long tv_nsec; };
struct itimerspec { struct timespec it_interval; struct timespec it_value; };
int timerfd_create(int clockid, int flags);
int timerfd_settime(int fd, int flags, const struct itimerspec *new_value,
                    struct itimerspec *old_value);
""")
_libc = _ffi.dlopen(None)
CLOCK_MONOTONIC = 1


class TickTimer:
    """Readable every `period` seconds while armed; `consume()` clears the readiness."""

    def __init__(self, period: float):
        self.period = period
        self.armed = False
        self.fd = _libc.timerfd_create(CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            err = _ffi.errno
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")

    def _set(self, seconds: float) -> None:
        spec = _ffi.new("struct itimerspec *")
        sec, nsec = int(seconds), int((seconds - int(seconds)) * 1e9)
        spec.it_interval.tv_sec = spec.it_value.tv_sec = sec
        spec.it_interval.tv_nsec = spec.it_value.tv_nsec = nsec
        if _libc.timerfd_settime(self.fd, 0, spec, _ffi.NULL) < 0:
            err = _ffi.errno
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def arm(self) -> None:
        if not self.armed:
            self._set(self.period)
            self.armed = True

    def disarm(self) -> None:
        if self.armed:
            self._set(0.0)  # a zero it_value stops the timer
            self.armed = False

    def consume(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
