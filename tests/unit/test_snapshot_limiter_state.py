"""Snapshot state of rate limiters, virtio-rng, virtio-blk and virtio-net survives a
save → JSON → restore round trip into freshly built devices: a throttled device keeps its
budget (and its block), a drive must still be the size the guest saw, and a frame the
net device held for a throttled guest is delivered after the restore, into the same ring.
"""

import json
import os

import pytest

from nodesvc.vmm.ratelimit import TokenType
from nodesvc_token_bucket.bucket import NS_PER_MS, TokenBucket
from nodesvc_token_bucket.limiter import TokenBucketLimiter
from nodesvc_virtio_blk.config import DriveConfig
from nodesvc_virtio_blk.device import VirtioBlock
from nodesvc_virtio_rng.device import VirtioRng


def _json(x):
    return json.loads(json.dumps(x))


class Clock:
    def __init__(self, t=10**12):
        self.t = t

    def __call__(self):
        return self.t


class Timer:
    """timer_factory stand-in: records what the limiter armed."""
    def __init__(self, loop, cb):
        self.cb, self.armed = cb, []

    def arm(self, delay_ns):
        self.armed.append(delay_ns)

    def close(self):
        pass


def limiter(clock, **cfg):
    return TokenBucketLimiter(cfg, None, clock=clock, timer_factory=Timer)


def test_bucket_keeps_budget_burst_and_partial_refill():
    c1 = Clock()
    b = TokenBucket(1000, 1000, one_time_burst=50, clock=c1)
    b.reduce(50 + 800)                  # burst spent, budget 200
    c1.t += 100 * NS_PER_MS             # 100 tokens earned, not yet credited
    saved = _json(b.save_state())
    c2 = Clock(5)                       # another process, another clock origin
    r = TokenBucket(1000, 1000, one_time_burst=50, clock=c2)
    assert r.restore_state(saved)
    assert (r.budget, r.one_time_burst) == (200, 0)
    assert r.reduce(300).name == "SUCCESS"      # 200 + the 100 earned before the save
    assert r.reduce(1).name == "FAILURE"
    fresh = TokenBucket(2000, 1000, clock=c2)   # configured differently: stays full
    assert not fresh.restore_state(saved) and fresh.budget == 2000


def test_blocked_limiter_stays_blocked_for_what_was_left():
    c = Clock()
    lim = limiter(c, ops={"size": 2, "refill_time": 1000})
    assert lim.consume(1, TokenType.OPS) and lim.consume(1, TokenType.OPS)
    assert not lim.consume(1, TokenType.OPS) and lim.blocked    # 100 ms retry timer
    c.t += 30 * NS_PER_MS
    saved = _json(lim.save_state())
    r = limiter(Clock(0), ops={"size": 2, "refill_time": 1000})
    r.restore_state(saved)
    assert r.blocked and r._timer.armed == [70 * NS_PER_MS]
    r._timer.cb()                                   # the timer fires: unblocked
    assert not r.blocked and r.bucket(TokenType.OPS).budget == 0
    with pytest.raises(ValueError, match="kind"):
        r.restore_state({**saved, "kind": "other"})


def test_rng_keeps_its_limiter_budget():
    c = Clock()
    rng = VirtioRng(limiter=limiter(c, bandwidth={"size": 4096, "refill_time": 1000}))
    assert rng.limiter.consume(4000, TokenType.BYTES)
    rng.bytes_served = 4000
    saved = _json(rng.save_state())
    r = VirtioRng(limiter=limiter(Clock(1), bandwidth={"size": 4096, "refill_time": 1000}))
    r.restore_state(saved)
    assert r.bytes_served == 4000 and r.limiter.bucket(TokenType.BYTES).budget == 96
    assert not r.limiter.consume(200, TokenType.BYTES)     # still throttled, not full
    VirtioRng().restore_state(saved)                       # no limiter now: nothing to keep


def test_blk_keeps_its_budget_and_refuses_another_size(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(1 << 20))
    drive = DriveConfig("rootfs", str(path), True)
    cfg = {"bandwidth": {"size": 1 << 20, "refill_time": 1000}, "ops": {"size": 10,
                                                                        "refill_time": 1000}}
    blk = VirtioBlock(drive, limiter=limiter(Clock(), **cfg))
    try:
        assert blk.limiter.consume(7, TokenType.OPS)
        saved = _json(blk.save_state())
    finally:
        blk.close()
    r = VirtioBlock(drive, limiter=limiter(Clock(), **cfg))
    try:
        r.check_state(saved)
        r.restore_state(saved)
        assert r.limiter.bucket(TokenType.OPS).budget == 3
    finally:
        r.close()
    os.truncate(path, 2 << 20)
    grown = VirtioBlock(drive)
    try:
        with pytest.raises(ValueError, match="2048 sectors, .* now has 4096"):
            grown.check_state(saved)
    finally:
        grown.close()


@pytest.fixture
def net_rigs():
    if os.geteuid() != 0:
        pytest.skip("not root: the virtio-net rig needs a network namespace and a TAP")
    from nodesvc_virtio_net.testing import NetRig
    rigs = []

    def make(**kw):
        rigs.append(NetRig(**kw))
        return rigs[-1]
    yield make
    for r in rigs:
        r.close()


def test_net_frame_held_for_a_throttled_guest_arrives_after_restore(net_rigs):
    from nodesvc_virtio_net.constants import RX_QUEUE
    frames = [bytes([0x02] * 6) + bytes([0x06] * 6) + b"\x08\x00" + bytes([n]) * 50
              for n in (1, 2)]
    src = net_rigs(rx_limiter=limiter(Clock(), ops={"size": 1, "refill_time": 100000}))
    src.post_rx(2)
    src.rxq.kick()
    for f in frames:
        src.dev.inject_rx(f)        # the first takes the only op; the second must wait
    assert [d for _, d in src.take_rx()] == frames[:1]
    saved = _json(src.dev.save_state())
    assert saved["rx_frame_chains"] == 1 and saved["rx_limiter"]["ops"]["budget"] == 0
    rx_queue = _json(src.transport.queues[RX_QUEUE].save_state())

    # The restored device: same rings (the rig allocates the same way), the source's
    # memory, the queue at its saved indices, then the device's own state and a kick.
    dst = net_rigs()
    dst.post_rx(2)
    dst.rxq.last_used = src.rxq.last_used
    dst.mem.write(0, src.mem.read(0, 32 << 20))
    dst.transport.queues[RX_QUEUE].restore_state(rx_queue, dst.mem)
    dst.dev.restore_state(saved)
    dst.dev.queue_notify(RX_QUEUE)
    got = dst.take_rx()
    assert [d for _, d in got] == frames[1:]     # delivered once, in the chain it held
    assert dst.transport.queues[RX_QUEUE].next_avail == rx_queue["next_avail"]
