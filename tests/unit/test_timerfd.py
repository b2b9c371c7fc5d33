"""The one timerfd wrapper (nodesvc.vmm.timerfd), as the vsock muxer and rate limiters use it."""

import select
import threading

from nodesvc.vmm.eventloop import EventLoop
from nodesvc.vmm.timerfd import TimerFd

MS = 1_000_000


def readable(fd, timeout_s):
    return bool(select.select([fd], [], [], timeout_s)[0])


def test_bare_periodic_timer_ticks_until_disarmed():
    t = TimerFd()
    try:
        assert not t.clear() and t.period_ns == 0          # nothing pending yet
        t.start_periodic(5 * MS)
        for _ in range(2):                                # it keeps ticking
            assert readable(t.fd, 2) and t.clear()
        t.start_periodic(5 * MS)                          # already running: left alone
        assert t.period_ns == 5 * MS
        t.disarm()
        t.clear()
        assert t.period_ns == 0 and not readable(t.fd, 0.05)
    finally:
        t.close()
    t.close()                                             # idempotent
    assert t.fd == -1


def test_one_shot_on_the_event_loop_fires_on_the_loop_thread():
    loop = EventLoop()
    loop.start(name="timerfd-test-loop")
    fired, where = threading.Event(), []
    try:
        t = TimerFd(loop, lambda: (where.append(threading.current_thread().name), fired.set()))
        t.arm(1 * MS)
        assert fired.wait(2) and where == ["timerfd-test-loop"]
        assert t.period_ns == 0                            # one-shot
        t.close()
        assert t.fd == -1
    finally:
        loop.close()
