"""The conformance suite every virtio device plugin runs.

    from nodesvc.testing import VirtioConformance

    class TestMyDevConformance(VirtioConformance):
        expected_device_id = 42
        def make_device(self, tmp_path):
            return MyDev()

Subclass it in the plugin's test module and implement `make_device(tmp_path)`
returning a fresh, unactivated `VirtioDevice`; pytest then
runs every check below against it: identity, feature negotiation, reset and
re-initialisation, and hostile chains on every queue (the device must end in
NEEDS_RESET or answer with an error — never raise out of the transport, hang,
or touch memory outside the guest).
"""

import pytest

from nodesvc.vmm.memory import GuestMemory
from nodesvc.vmm.virtio import VirtioMmioTransport, constants as V
from nodesvc.vmm.virtio.queue import _DESC

from .driver import CountingIrq, GuestDriver
from .fakes import InlineLoop


class VirtioConformance:
    expected_device_id: int = 0
    #: queues the device drains as soon as the driver kicks them (strict checks apply there)
    processed_on_kick: tuple[int, ...] = (0,)

    def make_device(self, tmp_path):  # pragma: no cover - provided by subclasses
        raise NotImplementedError

    @pytest.fixture
    def rig(self, tmp_path):
        mem = GuestMemory(8 << 20)
        dev = self.make_device(tmp_path)
        t = VirtioMmioTransport(dev, memory=mem, irq=CountingIrq(), event_loop=InlineLoop())
        yield mem, dev, t, GuestDriver(t, mem)
        t.close()
        t.device.close()  # the transport releases its fds; the device is its owner's
        mem.close()

    def test_identity(self, rig):
        _, dev, t, _ = rig
        assert t.read(V.MAGIC, 4) == V.MMIO_MAGIC
        assert t.read(V.DEVICE_ID, 4) == self.expected_device_id == dev.device_id
        assert len(dev.queue_sizes) >= 1

    def test_offers_version_1(self, rig):
        *_, drv = rig
        assert drv.device_features() >> V.F_VERSION_1 & 1

    def test_refuses_features_it_did_not_offer(self, rig):
        *_, drv = rig
        offered = drv.device_features()
        bogus = next(b for b in range(64) if not offered >> b & 1)
        with pytest.raises(RuntimeError):
            drv.init(features=offered | (1 << bogus))

    def test_activates_with_all_offered_features(self, rig):
        _, dev, t, drv = rig
        drv.init(drop=0)
        assert t.active and not t.failure

    def test_reset_then_reinit(self, rig):
        _, dev, t, drv = rig
        drv.init()
        t.write(V.STATUS, 4, 0)
        assert t.read(V.STATUS, 4) == 0 and not t.active
        drv.init()
        assert t.active

    def test_empty_kick_is_harmless(self, rig):
        *_, t, drv = rig
        drv.init()
        for q in drv.queues:
            q.kick()
        assert not t.failure

    def test_looping_chain_needs_reset(self, rig):
        mem, dev, t, drv = rig
        for queue_index in range(len(dev.queue_sizes)):
            drv.init()
            q = drv.queues[queue_index]
            buf = drv.alloc(64)
            _DESC.pack_into(mem.view(q.desc, 16), 0, buf, 64, V.DESC_F_NEXT, 1)
            _DESC.pack_into(mem.view(q.desc + 16, 16), 0, buf, 64,
                            V.DESC_F_NEXT | V.DESC_F_WRITE, 0)
            q.post(0)
            q.kick()
            status = t.read(V.STATUS, 4)
            if queue_index in self.processed_on_kick:
                assert status & V.S_NEEDS_RESET, f"queue {queue_index}"
            else:  # queues the device only fills later (rx, events) may not look yet
                assert status & V.S_NEEDS_RESET or q.take_used() == [], f"queue {queue_index}"
            drv.init()  # recovers after a driver reset
            assert t.active and not t.failure

    def test_wild_buffer_address_is_contained(self, rig):
        mem, dev, t, drv = rig
        for queue_index in range(len(dev.queue_sizes)):
            drv.init()
            q = drv.queues[queue_index]
            ok = drv.alloc(64)
            q.add([(ok, 16)], [(0xFFFF_FFFF_0000, 4096)])
            q.kick()
            # a chain naming memory the guest does not have is never completed as if it
            # were fine: the device needs reset, or (queues it fills later) it is untouched
            failed = t.read(V.STATUS, 4) & V.S_NEEDS_RESET
            if queue_index in self.processed_on_kick:
                assert failed, f"queue {queue_index}"
            assert failed or q.take_used() == [], f"queue {queue_index}"
