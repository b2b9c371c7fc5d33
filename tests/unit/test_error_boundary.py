"""The virtio error boundary: whatever a device raises on any entry point fails that
device (NEEDS_RESET), counted, logged with a rate limit; its fds are parked until the
driver resets it."""

import logging
import os

import pytest

from nodesvc.testing import CountingIrq, GuestDriver, InlineLoop, ManualLoop
from nodesvc.vmm.memory import GuestMemory
from nodesvc.vmm.virtio import VirtioDevice, VirtioMmioTransport, constants as V
from nodesvc.vmm.virtio.boundary import DeviceLoop, ErrorBoundary, LogLimiter


class Fragile(VirtioDevice):
    """Raises whatever `boom` holds from every entry point the guest can reach."""
    device_id = 4
    queue_sizes = (8,)

    def __init__(self, loop):
        super().__init__()
        self.loop, self.boom, self.calls = loop, None, 0
        self.r, self.w = os.pipe2(os.O_NONBLOCK)

    def _maybe(self):
        self.calls += 1
        if self.boom is not None:
            raise self.boom

    def queue_notify(self, index):
        self._maybe()

    def write_config(self, offset, size, value):
        self._maybe()

    def on_readable(self, _ev):
        os.read(self.r, 64)
        self._maybe()

    def activate(self, queues, interrupt):
        super().activate(queues, interrupt)
        self.loop.add_reader(self.r, self.on_readable)

    def close(self):
        os.close(self.r)
        os.close(self.w)


@pytest.fixture
def rig():
    mem, loop = GuestMemory(8 << 20), ManualLoop()
    boundary = ErrorBoundary("fragile")
    dev = Fragile(DeviceLoop(loop, boundary))
    t = VirtioMmioTransport(dev, memory=mem, irq=CountingIrq(), event_loop=loop,
                            boundary=boundary)
    drv = GuestDriver(t, mem)
    drv.init()
    yield dev, t, drv, loop
    t.close()
    dev.close()
    loop.close()
    mem.close()


def needs_reset(t):
    return bool(t.read(V.STATUS, 4) & V.S_NEEDS_RESET)


@pytest.mark.parametrize("boom", [KeyError("x"), AttributeError("none"), ValueError("bad")])
def test_any_error_on_a_kick_fails_only_the_device(rig, boom):
    dev, t, drv, loop = rig
    dev.boom = boom
    t.process_notify(0)
    assert needs_reset(t) and t.boundary.failures == 1
    assert type(boom).__name__ in t.failure


def test_config_space_write_errors_fail_the_device(rig):
    dev, t, drv, loop = rig
    dev.boom = RuntimeError("config")
    t.write(V.CONFIG + 4, 4, 1)          # a vCPU thread's MMIO write: must not raise
    assert needs_reset(t)


def test_host_side_callback_errors_fail_the_device_and_park_its_fds(rig):
    dev, t, drv, loop = rig
    dev.boom = OSError("host side")
    os.write(dev.w, b"x")
    loop.run_once(0.01)
    assert needs_reset(t) and t.boundary.failures == 1
    os.write(dev.w, b"y")                # still readable, but parked: no spin, no calls
    calls = dev.calls
    for _ in range(5):
        loop.run_once(0.01)
    assert dev.calls == calls and dev.r not in loop.readers
    # a driver reset brings the device and its fds back
    dev.boom = None
    drv.init()
    assert not needs_reset(t) and dev.r in loop.readers
    loop.run_once(0.01)
    assert dev.calls > calls


def test_deferred_calls_of_a_failed_device_are_dropped(rig):
    dev, t, drv, loop = rig
    ran = []
    t.fail("guest did something")
    dev.loop.call_soon(lambda: ran.append(1))
    loop.run_once()
    assert ran == []


def test_a_flood_of_failures_is_counted_but_logged_with_a_limit(rig, caplog):
    dev, t, drv, loop = rig
    dev.boom = ValueError("again")
    with caplog.at_level(logging.WARNING, logger="nodesvc.vmm.virtio"):
        for _ in range(2000):
            drv.init()
            t.process_notify(0)
    assert t.boundary.failures == 2000
    lines = [r for r in caplog.records if "needs reset" in r.getMessage()]
    assert 1 <= len(lines) <= t.boundary.limiter.burst
    assert len(t.failure) <= 200


def test_log_limiter_burst_then_summary():
    now = [0.0]
    lim = LogLimiter(burst=2, period=10.0, clock=lambda: now[0])
    assert [lim.allow()[0] for _ in range(5)] == [True, True, False, False, False]
    now[0] = 10.0
    assert lim.allow() == (True, 3)          # the next line says what was held back
    assert lim.allow() == (True, 0)


def test_vsock_host_activity_with_a_hostile_tx_ring_fails_the_device(tmp_path):
    """The defect that ended whole VMs: host-side activity ran vsock's TX processing on
    the event loop, outside the kick path, and a bogus available index escaped."""
    import socket
    from nodesvc_vsock import VsockDevice
    mem, loop = GuestMemory(8 << 20), ManualLoop()
    boundary = ErrorBoundary("vsock:vsock")
    uds = str(tmp_path / "v.sock")
    dev = VsockDevice(3, uds, DeviceLoop(loop, boundary))
    t = VirtioMmioTransport(dev, memory=mem, irq=CountingIrq(), event_loop=loop,
                            boundary=boundary)
    drv = GuestDriver(t, mem)
    drv.init()
    loop.run_once()
    tx = drv.queues[1]
    mem.write_u16(tx.avail + 2, 28763)   # "available index jumped by 28763"
    host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host.connect(uds)
    host.sendall(b"CONNECT 52\n")
    for _ in range(5):
        loop.run_once(0.01)               # must not raise out of the loop
    assert needs_reset(t) and boundary.failures >= 1
    host.close()
    t.close()
    dev.close()
    loop.close()
    mem.close()
