"""virtio-mmio register state machine and virtqueue processing, with a test device."""

import pytest

from nodesvc.vmm.memory import GuestMemory
from nodesvc.vmm.virtio import VirtioDevice, VirtioMmioTransport, constants as V
from nodesvc.testing import CountingIrq, GuestDriver


class Upper(VirtioDevice):
    """Echoes each chain's readable bytes, upper-cased, into its writable buffers."""
    device_id = 42
    features = 1 << 3
    queue_sizes = (8,)

    def __init__(self):
        super().__init__()
        self.resets = 0

    def config_bytes(self):
        return b"\x11\x22\x33\x44"

    def queue_notify(self, index):
        q = self.queues[index]
        while (chain := q.pop()) is not None:
            data = q.read_chain(chain).upper()
            q.add_used(chain.head, q.write_chain(chain, data))
        self.interrupt.signal_used(q)

    def reset(self):
        super().reset()
        self.resets += 1


@pytest.fixture
def env():
    mem = GuestMemory(4 << 20)
    irq = CountingIrq()
    dev = Upper()
    t = VirtioMmioTransport(dev, memory=mem, irq=irq, event_loop=None)
    yield mem, irq, dev, t
    mem.close()


def test_identity_registers(env):
    _, _, _, t = env
    assert t.read(V.MAGIC, 4) == 0x74726976
    assert t.read(V.VERSION, 4) == 2
    assert t.read(V.DEVICE_ID, 4) == 42
    assert t.read(V.CONFIG, 2) == 0x2211
    assert t.read(V.CONFIG + 2, 1) == 0x33


def test_features_offered_include_transport_bits(env):
    mem, _, _, t = env
    feats = GuestDriver(t, mem).device_features()
    assert feats == (1 << 3) | (1 << V.F_VERSION_1) | (1 << V.F_EVENT_IDX) | (1 << V.F_INDIRECT_DESC)


def test_request_roundtrip_and_interrupt(env):
    mem, irq, _, t = env
    drv = GuestDriver(t, mem)
    drv.init()
    q = drv.queues[0]
    src, dst = drv.alloc(5), drv.alloc(16)
    mem.write(src, b"hello")
    head = q.add([(src, 5)], [(dst, 16)])
    q.kick()
    assert q.take_used() == [(head, 5)]
    assert mem.read(dst, 5) == b"HELLO"
    assert irq.count == 1
    assert t.read(V.INTERRUPT_STATUS, 4) == V.INT_VRING
    t.write(V.INTERRUPT_ACK, 4, V.INT_VRING)
    assert t.read(V.INTERRUPT_STATUS, 4) == 0


def test_unknown_features_are_refused(env):
    mem, _, _, t = env
    with pytest.raises(RuntimeError, match="refused"):
        GuestDriver(t, mem).init(features=(1 << V.F_VERSION_1) | (1 << 7))


def test_legacy_driver_without_version_1_is_refused(env):
    mem, _, _, t = env
    with pytest.raises(RuntimeError, match="refused"):
        GuestDriver(t, mem).init(features=1 << 3)


def test_queue_outside_memory_fails_activation_with_needs_reset(env):
    mem, irq, dev, t = env
    drv = GuestDriver(t, mem)
    t.write(V.STATUS, 4, 0)
    for s in (1, 3):
        t.write(V.STATUS, 4, s)
    t.write(V.DRIVER_FEATURES_SEL, 4, 1)
    t.write(V.DRIVER_FEATURES, 4, 1)
    t.write(V.STATUS, 4, 11)
    t.write(V.QUEUE_SEL, 4, 0)
    t.write(V.QUEUE_NUM, 4, 8)
    t.write(V.QUEUE_DESC_LOW, 4, 0)
    t.write(V.QUEUE_DESC_HIGH, 4, 0x10)  # 64 GiB: not guest memory
    t.write(V.QUEUE_READY, 4, 1)
    t.write(V.STATUS, 4, 15)
    assert t.read(V.STATUS, 4) & V.S_NEEDS_RESET
    assert "outside guest memory" in t.failure
    assert not t.active and dev.queues == []
    # the driver resets; the device is usable again
    drv.init()
    assert t.active and not t.read(V.STATUS, 4) & V.S_NEEDS_RESET


def test_reset_resets_the_device(env):
    mem, _, dev, t = env
    GuestDriver(t, mem).init()
    t.write(V.STATUS, 4, 0)
    assert dev.resets == 1 and t.read(V.STATUS, 4) == 0 and not t.active


def test_queue_registers_frozen_after_ready(env):
    mem, _, _, t = env
    drv = GuestDriver(t, mem)
    drv.init()
    t.write(V.QUEUE_SEL, 4, 0)
    before = t.queues[0].desc_table
    t.write(V.QUEUE_DESC_LOW, 4, 0x1000)
    assert t.queues[0].desc_table == before


def test_looping_chain_sets_needs_reset_not_hang(env):
    mem, irq, _, t = env
    drv = GuestDriver(t, mem)
    drv.init()
    q = drv.queues[0]
    buf = drv.alloc(8)
    from nodesvc.vmm.virtio.queue import _DESC
    _DESC.pack_into(mem.view(q.desc, 16), 0, buf, 8, V.DESC_F_NEXT, 1)
    _DESC.pack_into(mem.view(q.desc + 16, 16), 0, buf, 8, V.DESC_F_NEXT, 0)  # 1 → 0 → 1 …
    q.post(0)
    q.kick()
    assert t.read(V.STATUS, 4) & V.S_NEEDS_RESET
    assert "loops" in t.failure
    assert irq.count == 1  # config interrupt tells the driver


def test_event_idx_suppresses_interrupts(env):
    mem, irq, _, t = env
    drv = GuestDriver(t, mem)
    drv.init(drop=0)  # negotiate EVENT_IDX
    q = drv.queues[0]
    src, dst = drv.alloc(1), drv.alloc(1)
    # used_event = 5: the driver wants an interrupt only once used idx passes 5
    mem.write_u16(q.avail + 4 + 2 * q.size, 5)
    for _ in range(3):
        q.add([(src, 1)], [(dst, 1)])
        q.kick()
        q.take_used()
    assert irq.count == 1  # the first interrupt is always sent, then suppressed until idx 6
    for _ in range(3):
        q.add([(src, 1)], [(dst, 1)])
        q.kick()
        q.take_used()
    assert irq.count == 2
    # and the device published avail_event so the driver knows when to kick
    assert mem.read_u16(q.used + 4 + 8 * q.size) == 6
