"""virtio-rng plugin: fills buffers, caps and rate limiting, config, conformance."""

import logging
import types

import pytest

from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.memory import GuestMemory
from nodesvc.vmm.ratelimit import TokenType
from nodesvc.vmm.virtio import VirtioMmioTransport, constants as V
from nodesvc.testing import CountingIrq, GuestDriver, InlineLoop, VirtioConformance
from nodesvc_virtio_rng import VirtioRng
from nodesvc_virtio_rng.device import MAX_FILL
from nodesvc_virtio_rng.plugin import attach, validate



class BudgetLimiter:
    """The limiter contract with a byte budget the test refills by hand."""

    def __init__(self, budget):
        self.budget, self.ops, self.wakeup, self.updates, self.closed = budget, 0, None, [], False

    def consume(self, tokens, token_type):
        if token_type is TokenType.OPS:
            self.ops += tokens
            return True
        if tokens > self.budget:
            return False
        self.budget -= tokens
        return True

    def manual_replenish(self, tokens, token_type):
        if token_type is TokenType.OPS:
            self.ops -= tokens

    def set_wakeup(self, cb):
        self.wakeup = cb

    def update(self, config):
        self.updates.append(config)

    def close(self):
        self.closed = True


@pytest.fixture
def rig():
    mem = GuestMemory(8 << 20)
    made = []

    def make(**kw):
        dev = VirtioRng(**kw)
        irq = CountingIrq()
        t = VirtioMmioTransport(dev, memory=mem, irq=irq, event_loop=InlineLoop())
        drv = GuestDriver(t, mem)
        drv.init()
        made.append(t)
        return types.SimpleNamespace(dev=dev, t=t, irq=irq, drv=drv, q=drv.queues[0], mem=mem)
    yield make
    for t in made:
        t.close()
        t.device.close()  # the transport releases its fds; the device is its owner's
    mem.close()


def test_fills_every_writable_buffer(rig):
    r = rig()
    a, b = r.drv.alloc(100), r.drv.alloc(28)
    r.mem.write(a, bytes(100))
    r.mem.write(b, bytes(28))
    head = r.q.add([], [(a, 100), (b, 28)])
    r.q.kick()
    assert r.q.take_used() == [(head, 128)] and r.irq.count == 1
    data = r.mem.read(a, 100) + r.mem.read(b, 28)
    assert data != bytes(128) and len(set(data)) > 32   # random, not zeros
    assert r.dev.bytes_served == 128


def test_readable_only_and_empty_chains_complete_with_zero(rig):
    r = rig()
    buf = r.drv.alloc(16)
    h1 = r.q.add([(buf, 16)], [])
    h2 = r.q.add([], [(buf, 0)])
    r.q.kick()
    assert r.q.take_used() == [(h1, 0), (h2, 0)]


def test_huge_buffers_are_capped(rig):
    r = rig()
    buf = r.drv.alloc(MAX_FILL * 2)
    head = r.q.add([], [(buf, MAX_FILL * 2)])
    r.q.kick()
    assert r.q.take_used() == [(head, MAX_FILL)]


def test_batch_one_interrupt(rig):
    r = rig()
    bufs = [r.drv.alloc(32) for _ in range(20)]
    for b in bufs:
        r.q.add([], [(b, 32)])
    r.q.kick()
    assert len(r.q.take_used()) == 20 and r.irq.count == 1


def test_throttled_until_the_wakeup(rig):
    lim = BudgetLimiter(64)
    r = rig(limiter=lim)
    bufs = [r.drv.alloc(32) for _ in range(4)]
    for b in bufs:
        r.q.add([], [(b, 32)])
    r.q.kick()
    assert len(r.q.take_used()) == 2 and lim.ops == 2   # the refused op was given back
    lim.budget = 1000
    lim.wakeup()
    assert len(r.q.take_used()) == 2 and lim.budget == 1000 - 64 and r.irq.count == 2


def test_update_rate_limiter_and_close(rig):
    lim = BudgetLimiter(0)
    r = rig(limiter=lim)
    r.dev.update_rate_limiter({"bandwidth": {"size": 10, "refill_time": 10}})
    assert lim.updates and not lim.closed
    with pytest.raises(ConfigError, match="entropy.rate_limiter"):
        r.dev.update_rate_limiter({"bogus": 1})
    r.dev.close()
    assert lim.closed


def test_wild_buffer_needs_reset(rig):
    r = rig()
    r.q.add([], [(0xFFFF_FFFF_0000, 64)])
    r.q.kick()
    assert r.t.read(V.STATUS, 4) & V.S_NEEDS_RESET


@pytest.mark.parametrize("cfg, message", [
    ({"seed": 1}, "entropy.seed: unknown key"),
    ({"rate_limiter": {"bandwidth": {"size": 1}}}, "entropy.rate_limiter.bandwidth.refill_time"),
])
def test_validate(cfg, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(cfg)
    validate({})
    validate({"rate_limiter": None})


def test_attach_builds_the_limiter():
    mem = GuestMemory(1 << 20)
    built = []
    ctx = types.SimpleNamespace(cmdline=[], event_loop=InlineLoop(), log=logging.getLogger("t"),
                                rate_limiter=lambda c: built.append(c) or BudgetLimiter(10))
    ctx.add_virtio_device = lambda dev, name: VirtioMmioTransport(
        dev, memory=mem, irq=CountingIrq(), event_loop=ctx.event_loop)
    cfg = {"rate_limiter": {"bandwidth": {"size": 10, "refill_time": 100}}}
    dev = attach(ctx, cfg)
    assert built == [cfg["rate_limiter"]] and dev.limiter.wakeup is not None
    assert isinstance(attach(ctx, {}).limiter, type(None))
    mem.close()


def test_registered_through_the_entry_point():
    from nodesvc.plugins import PluginManager
    assert "virtio-rng" in PluginManager().device_registry()


class TestConformance(VirtioConformance):
    expected_device_id = V.ID_RNG

    def make_device(self, tmp_path):
        return VirtioRng()
