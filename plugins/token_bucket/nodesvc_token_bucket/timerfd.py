"""A one-shot CLOCK_MONOTONIC timerfd watched by the VMM event loop.

`os.timerfd_create` only exists from Python 3.13; we call libc through cffi in
ABI mode (no compiler needed), like nodesvc.vmm.kvm does for ioctls.
"""

from __future__ import annotations

import os
from typing import Any, Callable

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
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
NS_PER_S = 1_000_000_000


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = _ffi.errno
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


class TimerFd:
    """Calls `on_expire()` on the event-loop thread `delay_ns` after `arm()`.

    Created once per limiter and registered with the loop for its whole life
    (Firecracker does the same: a later update() may enable limiting, and a
    seccomp filter may forbid creating fds by then).
    """

    def __init__(self, event_loop: Any, on_expire: Callable[[], None]):
        self._on_expire = on_expire
        self._loop = event_loop
        self.fd = _check(_libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC),
                         "timerfd_create")
        if event_loop is not None:
            event_loop.add_reader(self.fd, self._readable)

    def arm(self, delay_ns: int) -> None:
        """One-shot, relative; replaces any pending expiry."""
        # An all-zero it_value would *disarm* the timer and leave the limiter blocked forever.
        delay_ns = max(1, delay_ns)
        spec = _ffi.new("struct itimerspec *")
        spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(delay_ns, NS_PER_S)
        _check(_libc.timerfd_settime(self.fd, 0, spec, _ffi.NULL), "timerfd_settime")

    def _readable(self, _events: int = 0) -> None:
        try:
            os.read(self.fd, 8)     # the expiry count; reading also clears readiness
        except BlockingIOError:
            return                  # spurious (re-armed meanwhile): nothing expired
        self._on_expire()

    def close(self) -> None:
        if self.fd < 0:
            return
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1
