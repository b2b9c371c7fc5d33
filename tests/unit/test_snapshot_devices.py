"""Device and queue state survives a save/restore round trip through JSON."""

import collections
import json

import pytest

from nodesvc.vmm.memory import GuestMemory
from nodesvc.vmm.virtio.queue import Virtqueue, VirtqueueError
from nodesvc_serial.uart import LCR, LCR_DLAB, Uart16550
from nodesvc_vsock.device import VsockDevice


class _Irq:
    def __init__(self):
        self.n = 0

    def trigger(self):
        self.n += 1


def _json(x):
    return json.loads(json.dumps(x))


def test_queue_carries_on_at_its_saved_indices():
    mem = GuestMemory(1 << 20)
    q = Virtqueue(16)
    q.size, q.ready = 8, True
    q.desc_table, q.avail_ring, q.used_ring = 0x1000, 0x2000, 0x3000
    q.activate(mem, event_idx=True)
    q.next_avail, q.next_used = 65534, 7
    saved = _json(q.save_state())
    r = Virtqueue(16)
    r.restore_state(saved, mem)
    assert (r.size, r.ready, r.desc_table, r.avail_ring, r.used_ring) == (8, True, 0x1000,
                                                                         0x2000, 0x3000)
    assert (r.next_avail, r.next_used, r.event_idx) == (65534, 7, True)
    mem.write_u16(0x2002, 65535)        # the driver posted one more: it is seen
    assert r.has_available()
    with pytest.raises(VirtqueueError, match="max size"):
        Virtqueue(32).restore_state(saved, mem)


def test_serial_registers_and_buffered_input():
    irq = _Irq()
    u = Uart16550(irq, None)
    u.write(LCR, 1, LCR_DLAB | 3)
    u.write(0, 1, 0x01)       # divisor latch low
    u.write(LCR, 1, 3)
    u.write(1, 1, 0x01)       # IER: rx interrupts
    u.console_input(b"abc")
    r = Uart16550(_Irq(), None)
    r.restore_state(_json(u.save_state()))
    assert [r.read(0, 1) for _ in range(3)] == list(b"abc")
    assert r.read(LCR, 1) == 3 and r.read(1, 1) == 0x01
    r.write(LCR, 1, LCR_DLAB | 3)
    assert r.read(0, 1) == 0x01


def test_vsock_keeps_the_buffers_it_held():
    d = VsockDevice.__new__(VsockDevice)     # state only: no muxer, no socket
    d.guest_cid, d._reset_event_pending = 3, True
    d._rx_bufs = collections.deque([(1, [(0x4000, 44)], [(0x8000, 4096)])])
    d._evt_bufs = collections.deque([(5, [], [(0x9000, 8)])])
    r = VsockDevice.__new__(VsockDevice)
    r.guest_cid = 3
    r.restore_state(_json(d.save_state()))
    assert r._rx_bufs == d._rx_bufs and r._evt_bufs == d._evt_bufs
    assert r._reset_event_pending
    r.guest_cid = 4
    with pytest.raises(ValueError, match="guest_cid"):
        r.restore_state(_json(d.save_state()))
