"""The token-bucket limiter plugin: Firecracker's arithmetic, blocking, update() (fake clock and timer)."""

import pytest
from hypothesis import given, settings, strategies as st

from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.ratelimit import TokenType, consume_op
from nodesvc_token_bucket import REFILL_TIMER_INTERVAL_NS, Reduction, TokenBucket, TokenBucketLimiter

MS = 1_000_000
MiB = 1 << 20
BYTES, OPS = TokenType.BYTES, TokenType.OPS


class FakeClock:
    def __init__(self, now=10**12):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, ns):
        self.now += ns


class FakeTimer:
    """Stands in for the timerfd: records arm() and fires when the test says."""

    def __init__(self, event_loop, on_expire):
        self.on_expire, self.armed, self.closed = on_expire, [], False

    def arm(self, delay_ns):
        self.armed.append(delay_ns)

    def fire(self):
        self.on_expire()

    def close(self):
        self.closed = True


def limiter(cfg, clock):
    return TokenBucketLimiter(cfg, None, clock=clock, timer_factory=FakeTimer)


# --- TokenBucket --------------------------------------------------------------------

def test_bucket_starts_full_and_fails_without_taking_anything():
    b = TokenBucket(1000, 1000, clock=FakeClock())
    assert b.reduce(600) is Reduction.SUCCESS
    assert b.reduce(600) is Reduction.FAILURE
    assert b.budget == 400


def test_refill_is_proportional_to_elapsed_time_and_capped():
    clock = FakeClock()
    b = TokenBucket(1000, 1000, clock=clock)
    assert b.reduce(1000) is Reduction.SUCCESS
    clock.advance(250 * MS)
    assert b.reduce(251) is Reduction.FAILURE and b.budget == 250
    assert b.reduce(250) is Reduction.SUCCESS and b.budget == 0
    clock.advance(5000 * MS)                 # far more than a full refill
    assert b.reduce(1001) is not Reduction.SUCCESS
    assert b.budget == 0 and b.over_tokens == 1   # it was capped at 1000, then over-consumed


def test_fractions_of_a_token_carry_over():
    # 3 tokens per 10 ms: one token every 3.33 ms. Polling each ms must not lose the fractions.
    clock = FakeClock()
    b = TokenBucket(3, 10, clock=clock)
    b.reduce(3)
    got = 0
    for _ in range(101):    # token 30 is due at 100 ms plus the few ns of rounding up
        clock.advance(MS)
        if b.reduce(1) is Reduction.SUCCESS:
            got += 1
    assert got == 30


def test_one_time_burst_is_spent_first_and_never_refilled():
    clock = FakeClock()
    b = TokenBucket(100, 1000, one_time_burst=50, clock=clock)
    assert b.reduce(30) is Reduction.SUCCESS and (b.one_time_burst, b.budget) == (20, 100)
    assert b.reduce(70) is Reduction.SUCCESS and (b.one_time_burst, b.budget) == (0, 50)
    clock.advance(10_000 * MS)
    assert b.reduce(100) is Reduction.SUCCESS and b.one_time_burst == 0
    assert b.reduce(1) is Reduction.FAILURE


def test_force_replenish_caps_at_size_and_refills_the_burst_during_the_burst():
    b = TokenBucket(100, 1000, one_time_burst=50, clock=FakeClock())
    b.reduce(20)
    b.force_replenish(500)
    assert (b.one_time_burst, b.budget) == (50, 100)
    b.reduce(50 + 60)
    b.force_replenish(500)
    assert (b.one_time_burst, b.budget) == (0, 100)


@pytest.mark.parametrize("size, refill", [(0, 1000), (1000, 0), (0, 0)])
def test_disabled_bucket_always_passes(size, refill):
    b = TokenBucket(size, refill, clock=FakeClock())
    assert not b.enabled
    assert all(b.reduce(10**15) is Reduction.SUCCESS for _ in range(10))


def test_over_consumption_empties_the_bucket_and_owes_proportional_time():
    b = TokenBucket(100, 1000, clock=FakeClock())
    b.reduce(40)                                    # budget 60
    assert b.reduce(250) is Reduction.OVER_CONSUMPTION
    assert (b.budget, b.over_tokens) == (0, 190)
    assert b.over_consumption_delay_ns() == 1900 * MS   # 1.9 buckets' worth of refill


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 10_000), refill_ms=st.integers(1, 2000), burst=st.integers(0, 5000),
       steps=st.lists(st.tuples(st.integers(0, 50 * MS), st.integers(0, 10_000)), max_size=60))
def test_never_grants_more_than_burst_plus_size_plus_refill(size, refill_ms, burst, steps):
    clock = FakeClock()
    b = TokenBucket(size, refill_ms, burst, clock=clock)
    start, granted = clock.now, 0
    for dt, want in steps:
        clock.advance(dt)
        want = min(want, size)                      # no over-consumption here
        if b.reduce(want) is Reduction.SUCCESS:
            granted += want
        assert 0 <= b.budget <= size and 0 <= b.one_time_burst <= burst
    assert granted <= burst + size + (clock.now - start) * size // (refill_ms * MS)


# --- TokenBucketLimiter with a fake clock and timer ---------------------------------

def test_failed_consume_blocks_everything_until_the_100ms_timer_fires():
    clock = FakeClock()
    lim = limiter({"bandwidth": {"size": 1000, "refill_time": 1000}}, clock)
    woken = []
    lim.set_wakeup(lambda: woken.append(True))
    assert lim.consume(1000, BYTES) and not lim.blocked
    assert not lim.consume(1, BYTES)
    assert lim.blocked and lim._timer.armed == [REFILL_TIMER_INTERVAL_NS] == [100 * MS]
    assert not lim.consume(1, OPS)                  # disabled bucket, but the limiter is blocked
    clock.advance(100 * MS)
    lim._timer.fire()
    assert woken == [True] and not lim.blocked
    assert lim.consume(100, BYTES) and not lim.consume(1, BYTES)


def test_over_consumption_passes_then_blocks_for_the_debt():
    lim = limiter({"ops": {"size": 10, "refill_time": 1000}}, FakeClock())
    assert lim.consume(35, OPS)                     # 3.5 buckets: 2.5 of them on credit
    assert lim.blocked and lim._timer.armed == [2500 * MS]


def test_consume_op_gives_the_op_back_when_bytes_fail():
    lim = limiter({"bandwidth": {"size": 100, "refill_time": 1000},
                   "ops": {"size": 10, "refill_time": 1000}}, FakeClock())
    assert consume_op(lim, 80)
    assert not consume_op(lim, 80)
    assert lim.bucket(OPS).budget == 9 and lim.bucket(BYTES).budget == 20


def test_manual_replenish_returns_tokens():
    lim = limiter({"bandwidth": {"size": 100, "refill_time": 1000}}, FakeClock())
    lim.consume(100, BYTES)
    lim.manual_replenish(30, BYTES)
    assert lim.consume(30, BYTES) and not lim.consume(1, BYTES)


def run_device(lim, clock, seconds, work_ns, chunk=4096):
    """A device sending `chunk`-byte requests, retrying only when the limiter wakes it.

    Counts bytes over `seconds` of simulated time after draining the initial full
    bucket (steady state), up to the last wake-up inside the window.
    """
    while lim.consume(chunk, BYTES):
        pass
    end, got = clock.now + seconds * 1000 * MS, 0
    while True:
        if lim.blocked:
            if clock.now + lim._timer.armed[-1] > end:
                return got
            clock.advance(lim._timer.armed[-1])
            lim._timer.fire()
        elif lim.consume(chunk, BYTES):
            got += chunk
            clock.advance(work_ns)          # the device's own work takes time too


@pytest.mark.parametrize("seconds, work_ns", [(1, 0), (10, 10_000)])
def test_throughput_matches_the_configured_rate(seconds, work_ns):
    # 1 MiB/s written the usual Firecracker way: size 1 MiB refilled in 1000 ms.
    clock = FakeClock()
    lim = limiter({"bandwidth": {"size": MiB, "refill_time": 1000}}, clock)
    got = run_device(lim, clock, seconds, work_ns)
    assert abs(got / seconds - MiB) <= 0.03 * MiB


def test_bucket_smaller_than_the_retry_interval_caps_throughput():
    # Firecracker semantics, documented in docs/rate-limiters.md: a blocked limiter
    # retries after 100 ms, and a bucket holding only 10 ms of traffic is full (capped)
    # long before that, so the nominal 1 MiB/s delivers about a tenth of it.
    clock = FakeClock()
    lim = limiter({"bandwidth": {"size": MiB // 100, "refill_time": 10}}, clock)
    assert run_device(lim, clock, 10, 0) / 10 < 0.11 * MiB


# --- update() -------------------------------------------------------------------------

BW = {"size": 1000, "refill_time": 1000}
OPS_CFG = {"size": 10, "refill_time": 1000}


def test_update_absent_or_null_bucket_keeps_it_with_its_state():
    lim = limiter({"bandwidth": BW, "ops": OPS_CFG}, FakeClock())
    lim.consume(600, BYTES)
    bw = lim.bucket(BYTES)
    lim.update({"ops": {"size": 20, "refill_time": 1000}})
    lim.update({"bandwidth": None})
    assert lim.bucket(BYTES) is bw and bw.budget == 400
    assert lim.bucket(OPS).size == 20


def test_update_replaces_with_a_full_bucket_or_disables():
    lim = limiter({"bandwidth": BW, "ops": OPS_CFG}, FakeClock())
    lim.consume(1000, BYTES)
    lim.update({"bandwidth": {"size": 5000, "one_time_burst": 7, "refill_time": 500}})
    assert lim.bucket(BYTES).spec() == {"size": 5000, "one_time_burst": 7, "refill_time": 500}
    assert lim.bucket(BYTES).budget == 5000
    lim.update({"ops": {"size": 0, "refill_time": 0}})
    assert not lim.bucket(OPS).enabled
    assert lim.spec() == {"kind": "token-bucket",
                          "bandwidth": {"size": 5000, "one_time_burst": 7, "refill_time": 500}}


def test_update_can_enable_a_limiter_built_without_buckets():
    lim = limiter({"kind": "token-bucket"}, FakeClock())
    assert lim.consume(10**9, BYTES)
    lim.update({"bandwidth": BW})
    assert lim.consume(1000, BYTES) and not lim.consume(1, BYTES) and lim.blocked


def test_invalid_update_changes_nothing():
    lim = limiter({"bandwidth": BW}, FakeClock())
    with pytest.raises(ConfigError, match=r"^rate_limiter\.ops\.size: must be between"):
        lim.update({"bandwidth": {"size": 1, "refill_time": 1}, "ops": {"size": -1, "refill_time": 1}})
    assert lim.bucket(BYTES).size == 1000
    with pytest.raises(ConfigError, match=r"^rate_limiter\.kind: a token-bucket limiter cannot become"):
        lim.update({"kind": "always-allow"})


def test_update_while_blocked_stays_blocked_until_the_timer():
    lim = limiter({"bandwidth": BW}, FakeClock())
    lim.consume(1000, BYTES)
    lim.consume(1, BYTES)
    lim.update({"bandwidth": {"size": 0, "refill_time": 0}})
    assert lim.blocked and not lim.consume(1, BYTES)
    lim._timer.fire()
    assert lim.consume(10**9, BYTES)


def test_close_closes_the_timer_and_drops_the_wakeup():
    lim = limiter({"bandwidth": BW}, FakeClock())
    lim.set_wakeup(lambda: None)
    lim.close()
    assert lim._timer.closed and lim._wakeup is None
