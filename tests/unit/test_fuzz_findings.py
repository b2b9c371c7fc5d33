"""Regression tests for what the atheris fuzz targets (fuzz/, docs/fuzzing.md) found.

Each test replays the shape of a crashing input through the real transport, its error
boundary and guest memory, and checks the device does what it should instead: a hostile
driver may fail its own device with VirtqueueError, nothing else may escape.
"""

import struct

import pytest

from nodesvc.testing import CountingIrq, GuestDriver, InlineLoop
from nodesvc.vmm.memory import GuestMemory
from nodesvc.vmm.virtio import VirtioDevice, VirtioMmioTransport, constants as V
from nodesvc.vmm.virtio.boundary import ErrorBoundary
from nodesvc_virtio_blk import VirtioBlock, parse_drive
from nodesvc_virtio_blk.device import S_OK, T_IN

HDR = struct.Struct("<IIQ")
WILD = 0xFFFF_3030_3030_3030      # far outside guest memory


class Boundary(ErrorBoundary):
    """The VMM's boundary, keeping what it contained (the tests want none of it)."""

    def __init__(self, name):
        super().__init__(name)
        self.contained = []

    def describe(self, e):
        self.contained.append(e)
        return super().describe(e)


def transport(device, mem):
    b = Boundary("fuzz-finding")
    t = VirtioMmioTransport(device, memory=mem, irq=CountingIrq(), event_loop=InlineLoop(),
                            boundary=b)
    drv = GuestDriver(t, mem)
    drv.init()
    return t, drv, b


@pytest.fixture
def blk(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * 16)            # 8 sectors
    mem = GuestMemory(4 << 20)
    dev = VirtioBlock(parse_drive({"drive_id": "d", "path_on_host": str(path),
                                   "is_root_device": False}))
    t, drv, b = transport(dev, mem)
    yield mem, t, drv, b, path
    t.close()
    dev.close()
    mem.close()


def test_blk_read_with_a_zero_length_buffer_outside_memory(blk):
    """virtio_blk target: a zero-length data descriptor anywhere is accepted by the
    parser, and FastRing.views() then raised GuestMemoryError into the boundary (the
    device failed instead of completing the read)."""
    mem, t, drv, b, path = blk
    q = drv.queues[0]
    hdr, data, status = drv.alloc(16), drv.alloc(512), drv.alloc(1)
    mem.write(hdr, HDR.pack(T_IN, 0, 1))
    q.add([(hdr, 16)], [(data, 512), (WILD, 0), (status, 1)])
    q.kick()
    assert b.contained == [] and t.failure is None
    assert q.take_used() and mem.read_u8(status) == S_OK
    assert mem.read(data, 512) == path.read_bytes()[512:1024]


class Counting(VirtioDevice):
    device_id = V.ID_RNG
    queue_sizes = (8,)

    def __init__(self):
        super().__init__()
        self.activations = 0

    def activate(self, queues, interrupt):
        super().activate(queues, interrupt)
        self.activations += 1


A, D, F, OK = V.S_ACKNOWLEDGE, V.S_DRIVER, V.S_FEATURES_OK, V.S_DRIVER_OK


def test_mmio_failed_device_is_not_reactivated_by_toggling_driver_ok():
    """mmio target: DRIVER_OK without FEATURES_OK fails the device (NEEDS_RESET); the
    driver then cleared DRIVER_OK and set it again with FEATURES_OK, and the transport
    activated the failed device again without a reset, dropping NEEDS_RESET."""
    mem = GuestMemory(4 << 20)
    dev = Counting()
    t, drv, b = transport(dev, mem)
    assert dev.activations == 1 and t.active
    t.write(V.STATUS, 4, 0)
    for status in (A, A | D, A | D | OK):             # DRIVER_OK without FEATURES_OK
        t.write(V.STATUS, 4, status)
    assert t.failure and not t.active and t.read(V.STATUS, 4) & V.S_NEEDS_RESET
    t.write(V.DRIVER_FEATURES_SEL, 4, 1)
    t.write(V.DRIVER_FEATURES, 4, 1)                  # VERSION_1
    for status in (A | D, A | D | F, A | D | F | OK):
        t.write(V.STATUS, 4, status)
    assert dev.activations == 1 and not t.active
    assert t.read(V.STATUS, 4) & V.S_NEEDS_RESET
    drv.init()                                        # a reset starts it again
    assert dev.activations == 2 and t.active and t.failure is None
    mem.close()


def test_mmio_running_device_is_not_activated_twice():
    mem = GuestMemory(4 << 20)
    dev = Counting()
    t, drv, b = transport(dev, mem)
    t.write(V.STATUS, 4, A | D | F)                   # DRIVER_OK cleared, no reset
    t.write(V.STATUS, 4, A | D | F | OK)
    assert dev.activations == 1 and t.active and b.contained == []
    mem.close()


def test_i8042_replies_cannot_grow_a_full_keyboard_queue():
    """i8042 target: with the keyboard queue full, "echo 0x41 as a keyboard byte" (0xD2)
    then "read CTR" (0x20) pushed the echoed byte back onto the queue every time: a
    guest looping on the two commands grew it without bound."""
    from nodesvc_i8042.i8042 import CMD_KBD_LOOP, CMD_READ_CTR, DEFAULT_CTR, I8042, \
        KBD_QUEUE_SIZE

    class Irq:
        def trigger(self):
            pass
    dev = I8042(Irq(), lambda: None)
    for _ in range(KBD_QUEUE_SIZE):                 # keyboard resets: ACK + BAT each
        dev.data_port.write(0, 1, 0xFF)
    assert len(dev._kbd) == KBD_QUEUE_SIZE - 1      # one byte sits in the output buffer
    for _ in range(1000):
        dev.command_port.write(0, 1, CMD_KBD_LOOP)
        dev.data_port.write(0, 1, 0x41)
        dev.command_port.write(0, 1, CMD_READ_CTR)
        assert len(dev._kbd) <= KBD_QUEUE_SIZE
    assert dev.data_port.read(0, 1) == DEFAULT_CTR  # the reply still comes first
    assert dev.kbd_dropped > 0


def test_mmds_retransmitted_syn_then_ack_leaves_nothing_pending():
    """virtio_net target (MMDS interface): SYN, the SYN again (the client missed our
    SYN-ACK), then the client's ACK: the connection was established with a SYN-ACK still
    marked owed, so `has_pending()` stayed true while `pending_rx()` had nothing to give,
    and the device's MMDS timer re-armed at once forever (the event loop spun)."""
    import socket as so

    from nodesvc.mmds import Mmds, MmdsStack, tcp
    guest, mmds_ip = so.inet_aton("169.254.0.2"), so.inet_aton("169.254.169.254")
    mac_g, mac_m = bytes.fromhex("020000000002"), bytes.fromhex("060123456701")

    def frame(seq, ack, flags):
        seg = tcp.build_segment(guest, mmds_ip, 40000, 80, seq, ack, flags, 64240)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 0, 0x4000, 64, 6, 0,
                         guest, mmds_ip)
        ip = ip[:10] + struct.pack("!H", tcp.checksum(ip)) + ip[12:]
        return mac_m + mac_g + b"\x08\x00" + ip + seg

    now = [100.0]
    stack = MmdsStack(Mmds(), clock=lambda: now[0], isn=lambda: 1000)
    assert stack.take(frame(5, 0, tcp.SYN))
    assert stack.pending_rx() is not None              # SYN-ACK (lost on the way)
    assert stack.take(frame(5, 0, tcp.SYN))            # so the client sends its SYN again
    assert stack.take(frame(6, 1001, tcp.ACK))         # and then ACKs the first SYN-ACK
    for _ in range(10):
        if stack.pending_rx() is None:
            break
    assert not stack.has_pending()
