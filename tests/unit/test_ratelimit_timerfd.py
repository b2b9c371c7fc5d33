"""The token-bucket limiter's real timerfd, driven by a real EventLoop thread."""

import os
import threading

import pytest

from nodesvc.vmm.eventloop import EventLoop
from nodesvc.vmm.ratelimit import TokenType
from nodesvc_token_bucket import TokenBucketLimiter
from nodesvc.vmm.timerfd import TimerFd

OPS = TokenType.OPS


@pytest.fixture
def loop():
    lp = EventLoop()
    lp.start(name="rl-test-loop")
    yield lp
    lp.close()


def test_blocked_limiter_wakes_its_callback_on_the_loop_thread(loop):
    lim = TokenBucketLimiter({"ops": {"size": 1, "refill_time": 1000}}, loop)
    woke, where = threading.Event(), []
    lim.set_wakeup(lambda: (where.append(threading.current_thread().name), woke.set()))
    try:
        assert lim.consume(1, OPS)
        assert not lim.consume(1, OPS) and lim.blocked
        # the wake-up delay (nominal 100 ms) is a figure of bench/ratelimit.py
        assert woke.wait(5), "the limiter's timer never fired"
        assert where == ["rl-test-loop"] and not lim.blocked
    finally:
        lim.close()


def test_timerfd_zero_delay_still_fires_and_close_unregisters(loop):
    fired = threading.Event()
    timer = TimerFd(loop, fired.set)
    fd = timer.fd
    timer.arm(0)                                    # a zero it_value would disarm instead
    assert fired.wait(2)
    timer.close()
    timer.close()                                   # idempotent
    assert fd not in loop._handlers
    with pytest.raises(OSError):
        os.fstat(fd)
