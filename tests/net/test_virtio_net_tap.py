"""virtio-net against a real TAP in a test namespace, driven by the in-process guest driver.

Host side: 192.0.2.1 on the TAP, with a static neighbour entry for the guest's
192.0.2.2 / 02:00:00:00:00:02, so no ARP is involved. Guest side: frames crafted
here and placed in guest memory, as a guest kernel would.
"""

import select
import struct
import threading
import time

import pytest

from nodesvc.net import frames
from nodesvc.vmm.eventloop import EventLoop
from nodesvc.vmm.virtio import constants as V
from nodesvc_virtio_net import constants as C
from nodesvc.testing import FakeLimiter
from nodesvc_virtio_net.testing import GUEST_IP, GUEST_MAC, HOST_IP

NO_MRG = (1 << C.F_MRG_RXBUF) | (1 << V.F_EVENT_IDX)


def guest_udp(frame: bytes):
    pkt = frames.parse_udp(frame)
    assert pkt is not None, f"not UDP/IPv4: {frame[:40].hex()}"
    return pkt


@pytest.mark.parametrize("split", [None, 0, 5, 40], ids=["hdr-alone", "one-buffer",
                                                         "split-in-hdr", "split-in-frame"])
def test_tx_frame_reaches_host_socket(make_rig, split):
    rig = make_rig()
    sock = rig.host_socket(5000)
    rig.post_tx(rig.udp_to_host(5000, b"hello host"), split=split)
    rig.txq.kick()
    assert sock.recvfrom(100) == (b"hello host", (GUEST_IP, 40000))
    assert [n for _, n in rig.txq.take_used()] == [0]
    st = rig.dev.stats
    assert (st.tx_packets, st.tx_bytes, st.tx_dropped) == (1, 14 + 20 + 8 + 10, 0)
    assert rig.irq.count >= 1


def test_rx_udp_from_namespace_lands_in_guest_buffer(make_rig):
    rig = make_rig(mtu=1500)
    rig.post_rx(4)
    rig.rxq.kick()
    sock = rig.host_socket(5001)
    sock.sendto(b"hello guest", (GUEST_IP, 6000))
    rig.loop.run_until(lambda: rig.dev.stats.rx_packets == 1)
    [(hdr, frame)] = rig.take_rx()
    assert struct.unpack_from("<H", hdr, 10)[0] == 1  # num_buffers
    pkt = guest_udp(frame)
    assert (pkt.dst_mac, pkt.src_ip, pkt.sport, pkt.dport, pkt.payload) == \
        (GUEST_MAC, HOST_IP, 5001, 6000, b"hello guest")
    assert rig.dev.stats.rx_bytes == len(frame) and rig.irq.count >= 1


def test_rx_without_buffers_does_not_spin_and_resumes_after_kick(make_rig):
    rig = make_rig()
    rig.post_rx(1)
    rig.rxq.kick()
    sock = rig.host_socket(5002)
    for i in range(3):
        sock.sendto(b"pkt%d" % i, (GUEST_IP, 6000))
    rig.loop.run_until(lambda: rig.dev.stats.rx_packets == 1)
    tap_fd = rig.tap.fd
    assert select.select([tap_fd], [], [], 1.0)[0]  # two frames still wait in the TAP
    before = rig.loop.dispatches[tap_fd]
    for _ in range(50):
        rig.loop.run_once(0.005)  # a spinning device would be woken every time
    assert rig.loop.dispatches[tap_fd] == before and tap_fd not in rig.loop.readers
    assert rig.dev.stats.rx_no_buffers >= 1 and rig.dev.stats.rx_packets == 1
    rig.post_rx(4)
    rig.rxq.kick()
    rig.loop.run_until(lambda: rig.dev.stats.rx_packets == 3)
    got = [guest_udp(f).payload for _, f in rig.take_rx()]
    assert got == [b"pkt0", b"pkt1", b"pkt2"] and rig.dev.stats.rx_dropped == 0


def test_rate_limited_tx_defers_and_resumes(make_rig):
    limiter = FakeLimiter(ops=2)
    rig = make_rig(tx_limiter=limiter)
    sock = rig.host_socket(5003)
    for i in range(5):
        rig.post_tx(rig.udp_to_host(5003, b"tx%d" % i))
    rig.txq.kick()
    assert [sock.recv(10) for _ in range(2)] == [b"tx0", b"tx1"]
    assert len(rig.txq.take_used()) == 2 and rig.dev.stats.tx_throttled == 1
    rig.txq.kick()  # a kick while throttled sends nothing more
    assert rig.txq.take_used() == [] and limiter.wakeup is not None
    limiter.refill()
    rig.loop.run_once()
    assert [sock.recv(10) for _ in range(3)] == [b"tx2", b"tx3", b"tx4"]
    assert len(rig.txq.take_used()) == 3 and rig.dev.stats.tx_packets == 5


def test_rate_limited_rx_defers_without_polling_and_resumes(make_rig):
    limiter = FakeLimiter(ops=1)
    rig = make_rig(rx_limiter=limiter)
    rig.post_rx(8)
    rig.rxq.kick()
    sock = rig.host_socket(5004)
    for i in range(3):
        sock.sendto(b"rx%d" % i, (GUEST_IP, 6000))
    rig.loop.run_until(lambda: rig.dev.stats.rx_throttled >= 1)
    assert rig.dev.stats.rx_packets == 1 and rig.tap.fd not in rig.loop.readers
    for _ in range(20):
        rig.loop.run_once(0.005)
    assert rig.dev.stats.rx_packets == 1
    limiter.refill()
    rig.loop.run_until(lambda: rig.dev.stats.rx_packets == 3)
    assert [guest_udp(f).payload for _, f in rig.take_rx()] == [b"rx0", b"rx1", b"rx2"]


def test_oversized_frame_without_mrg_is_dropped_and_counted(make_rig):
    rig = make_rig(mtu=9000, drop=NO_MRG)
    rig.post_rx(2, size=2048)
    rig.rxq.kick()
    sock = rig.host_socket(5005)
    sock.sendto(b"B" * 4000, (GUEST_IP, 6000))
    sock.sendto(b"small", (GUEST_IP, 6000))
    rig.loop.run_until(lambda: rig.dev.stats.rx_packets == 1)
    assert rig.dev.stats.rx_dropped == 1
    assert [guest_udp(f).payload for _, f in rig.take_rx()] == [b"small"]


def test_mergeable_rx_spreads_a_large_frame_over_buffers(make_rig):
    rig = make_rig(mtu=9000)
    assert rig.features >> C.F_MRG_RXBUF & 1
    rig.post_rx(4, size=2048)
    rig.rxq.kick()
    sock = rig.host_socket(5006)
    payload = bytes(range(256)) * 20  # 5120 bytes: three buffers
    sock.sendto(payload, (GUEST_IP, 6000))
    rig.loop.run_until(lambda: rig.dev.stats.rx_packets == 1)
    used = rig.rxq.take_used()
    assert len(used) == 3 and [n for _, n in used[:2]] == [2048, 2048]
    data = b"".join(rig.mem.read(rig.rx_bufs[h], n) for h, n in used)
    assert struct.unpack_from("<H", data, 10)[0] == 3
    assert guest_udp(data[12:]).payload == payload


def test_tx_filter_takes_frames_before_the_tap(make_rig):
    limiter = FakeLimiter(ops=1)
    rig = make_rig(tx_limiter=limiter)
    seen = []
    rig.dev.tx_filter = lambda frame: seen.append(frame) or b"mmds" in frame
    sock = rig.host_socket(5007)
    rig.post_tx(rig.udp_to_host(5007, b"to mmds"))
    rig.post_tx(rig.udp_to_host(5007, b"to host"))
    rig.txq.kick()
    assert sock.recv(20) == b"to host"  # the filtered frame cost no limiter op
    assert rig.dev.stats.tx_filtered == 1 and rig.dev.stats.tx_packets == 1
    assert guest_udp(seen[0]).payload == b"to mmds"


def test_injected_frame_reaches_the_guest(make_rig):
    rig = make_rig()
    rig.post_rx(2)
    rig.rxq.kick()
    frame = frames.udp_frame("02:00:00:00:00:fe", GUEST_MAC, "169.254.169.254", GUEST_IP,
                             80, 40000, b"metadata")
    rig.dev.inject_rx(frame)
    [(hdr, got)] = rig.take_rx()
    assert got == frame and hdr == bytes(10) + b"\x01\x00"


def test_reset_stops_polling_and_reinit_works(make_rig):
    rig = make_rig()
    rig.post_rx(2)
    rig.rxq.kick()
    assert rig.tap.fd in rig.loop.readers
    rig.transport.write(V.STATUS, 4, 0)
    assert rig.tap.fd not in rig.loop.readers and rig.dev.rx is None
    rig.drv.init()
    rig.loop.run_once()
    rig.rxq, rig.txq = rig.drv.queues
    rig.post_rx(2)
    rig.rxq.kick()
    sock = rig.host_socket(5008)
    sock.sendto(b"after reset", (GUEST_IP, 6000))
    rig.loop.run_until(lambda: rig.dev.stats.rx_packets == 1)
    assert guest_udp(rig.take_rx()[0][1]).payload == b"after reset"


# --- the plugin factory ---------------------------------------------------------------------

def _ctx(mem, loop, made):
    from nodesvc.vmm.bus import Bus
    from nodesvc.vmm.device import DeviceContext
    from nodesvc.vmm.virtio import VirtioMmioTransport
    from nodesvc.testing import CountingIrq

    def add(dev, name):
        t = VirtioMmioTransport(dev, memory=mem, irq=CountingIrq(), event_loop=loop, name=name)
        made.append(t)
        return t
    return DeviceContext(vm_id="t", memory=mem, pio_bus=Bus("pio"), mmio_bus=Bus("mmio"),
                         event_loop=loop, irq_line=None, console_out=None, request_exit=None,
                         rate_limiter=lambda cfg: FakeLimiter(), add_virtio_device=add)


def test_plugin_attaches_to_a_tap_in_a_namespace(netns):
    from nodesvc.vmm.errors import ConfigError
    from nodesvc.vmm.memory import GuestMemory
    from nodesvc.testing import GuestDriver
    from nodesvc_virtio_net.plugin import attach
    from nodesvc.testing import ManualLoop

    netns.create_tap("ptap0")
    mem, loop, made = GuestMemory(8 << 20), ManualLoop(), []
    try:
        ctx = _ctx(mem, loop, made)
        cfg = {"iface_id": "eth0", "host_dev_name": "ptap0", "netns": netns.name,
               "guest_mac": "06:00:ac:10:00:02", "mtu": 1400,
               "tx_rate_limiter": {"ops": {"size": 10, "refill_time": 100}}}
        dev = attach(ctx, cfg)
        assert made[0].device is dev and dev.tx_limiter is not None and dev.rx_limiter is None
        feats = GuestDriver(made[0], mem).device_features()
        assert feats >> C.F_MAC & 1 and feats >> C.F_MTU & 1 and feats >> C.F_STATUS & 1
        assert made[0].read(V.CONFIG, 4) == 0x10ac0006 and dev.config_bytes()[10:12] == b"\x78\x05"
        with pytest.raises(ConfigError, match=r"eth1\]: cannot open TAP ptap0 in netns .*busy"):
            attach(ctx, {**cfg, "iface_id": "eth1"})  # the first device holds it
        with pytest.raises(ConfigError, match="cannot open TAP ptap0 in netns nope"):
            attach(ctx, {**cfg, "netns": "nope"})
    finally:
        for t in made:
            t.close()
            t.device.close()  # the transport releases its fds; the device is its owner's
        loop.close()
        mem.close()


def test_mergeable_frame_waits_for_more_buffers(make_rig):
    rig = make_rig(mtu=9000)
    rig.post_rx(1, size=2048)
    rig.rxq.kick()
    sock = rig.host_socket(5009)
    payload = b"M" * 5000
    sock.sendto(payload, (GUEST_IP, 6000))
    rig.loop.run_until(lambda: rig.dev.rx.pending)  # read, but only 2 KiB of room
    for _ in range(20):
        rig.loop.run_once(0.005)
    assert rig.dev.stats.rx_packets == 0 and rig.tap.fd not in rig.loop.readers
    assert rig.rxq.take_used() == []
    rig.post_rx(3, size=2048)
    rig.rxq.kick()
    used = rig.rxq.take_used()
    assert [n for _, n in used] == [2048, 2048, 12 + 14 + 28 + 5000 - 4096]
    data = b"".join(rig.mem.read(rig.rx_bufs[h], n) for h, n in used)
    assert guest_udp(data[12:]).payload == payload and rig.dev.stats.rx_dropped == 0


def test_tx_yields_the_loop_after_a_budget_of_frames(make_rig, monkeypatch):
    from nodesvc_virtio_net import tx
    monkeypatch.setattr(tx, "BUDGET", 8)
    rig = make_rig()
    sock = rig.host_socket(5010)
    for i in range(20):
        rig.post_tx(rig.udp_to_host(5010, b"%d" % i), split=0)
    rig.txq.kick()
    assert rig.dev.stats.tx_packets == 8  # the rest waits for the next turn of the loop
    rig.loop.run_once(0.1)
    assert rig.dev.stats.tx_packets == 16
    rig.loop.run_until(lambda: rig.dev.stats.tx_packets == 20)
    assert [sock.recv(10) for _ in range(20)] == [b"%d" % i for i in range(20)]


def test_with_the_vmm_event_loop_thread(make_rig):
    """Device work on the VMM's own EventLoop thread; kicks arrive there as ioeventfds would."""
    errors = []
    loop = EventLoop(on_error=errors.append)
    loop.start()
    rig = None
    try:
        rig = make_rig(loop=loop)

        def kick(i):  # like an ioeventfd: the device runs on the loop thread, not ours
            done = threading.Event()
            loop.call_soon(lambda: (rig.transport.process_notify(i), done.set()))
            assert done.wait(2)

        rig.post_rx(4)
        kick(C.RX_QUEUE)
        sock = rig.host_socket(5011)
        sock.sendto(b"via epoll", (GUEST_IP, 6000))
        deadline = time.monotonic() + 2
        while rig.dev.stats.rx_packets < 1:
            assert time.monotonic() < deadline, "RX frame never arrived"
            time.sleep(0.01)
        assert guest_udp(rig.take_rx()[0][1]).payload == b"via epoll"
        rig.post_tx(rig.udp_to_host(5011, b"back"))
        kick(C.TX_QUEUE)
        assert sock.recv(10) == b"back" and not errors
    finally:
        if rig is not None:
            rig.close()  # before the loop it uses
        loop.close()
