"""virtio-net without root: config validation, the conformance suite, and the device's
frame handling against a socketpair standing in for the TAP (datagrams keep frame
boundaries and truncate like tun). Real-TAP tests live in tests/net/."""

import socket
import struct

import pytest
from hypothesis import given, settings, strategies as st

from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.memory import GuestMemory
from nodesvc.vmm.virtio.boundary import DeviceLoop, ErrorBoundary
from nodesvc.vmm.virtio import VirtioMmioTransport, constants as V
from nodesvc.testing import CountingIrq, FakeLimiter, GuestDriver, ManualLoop, VirtioConformance
from nodesvc.vmm.virtio.queue import _DESC
from nodesvc_virtio_net import VirtioNet, parse_config
from nodesvc_virtio_net import constants as C
from nodesvc_virtio_net.plugin import validate

MAC = bytes.fromhex("06000ac10002")


class PairTap:
    """The TAP surface VirtioNet uses, over an AF_UNIX datagram socketpair."""

    def __init__(self):
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.peer.settimeout(1.0)
        self.fd, self.name, self.offloads = self.sock.fileno(), "pair0", []

    def set_offload(self, flags):
        self.offloads.append(flags)

    def close(self):
        self.sock.close()
        self.peer.close()


# --- config ------------------------------------------------------------------------------

GOOD = {"iface_id": "eth0", "host_dev_name": "tap0"}


def test_minimal_config_parses():
    cfg = parse_config(GOOD)
    assert (cfg.iface_id, cfg.host_dev_name, cfg.guest_mac, cfg.mtu) == ("eth0", "tap0", None, None)


def test_full_config_parses():
    cfg = parse_config({**GOOD, "guest_mac": "06:00:0A:c1:00:02", "mtu": 9000, "netns": "vm0",
                        "rx_rate_limiter": {"ops": {"size": 10, "refill_time": 100}},
                        "tx_rate_limiter": None})
    assert cfg.guest_mac == MAC and cfg.mtu == 9000 and cfg.netns == "vm0"
    assert cfg.rx_rate_limiter["ops"]["size"] == 10 and cfg.tx_rate_limiter is None


@pytest.mark.parametrize("patch, words", [
    ({"bogus": 1}, "bogus: unknown key"),
    ({"iface_id": None}, "iface_id: must be a non-empty string"),
    ({"host_dev_name": "a" * 16}, "longer than 15"),
    ({"host_dev_name": "tap/0"}, "character"),
    ({"guest_mac": "06:00:0a:c1:00"}, "guest_mac: must be a MAC"),
    ({"guest_mac": "06-00-0a-c1-00-02"}, "guest_mac: must be a MAC"),
    ({"guest_mac": "zz:00:0a:c1:00:02"}, "guest_mac: must be a MAC"),
    ({"guest_mac": "01:00:5e:00:00:01"}, "multicast"),
    ({"guest_mac": "00:00:00:00:00:00"}, "not a usable"),
    ({"mtu": 67}, "mtu: must be an integer 68..65535"),
    ({"mtu": True}, "mtu"),
    ({"netns": 3}, "netns: must be a non-empty string"),
    ({"rx_rate_limiter": {"ops": {"size": 1}}}, "rx_rate_limiter.ops.refill_time"),
    ({"tx_rate_limiter": {"bandwidth": 5}}, "tx_rate_limiter.bandwidth: must be an object"),
])
def test_validate_refuses(patch, words):
    with pytest.raises(ConfigError) as e:
        validate({**GOOD, **patch})
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("missing", ["iface_id", "host_dev_name"])
def test_validate_requires(missing):
    cfg = dict(GOOD)
    del cfg[missing]
    with pytest.raises(ConfigError, match=f"{missing}: required"):
        validate(cfg)


def test_registered_kind_validates_before_the_vm_exists():
    from nodesvc.plugins import PluginManager
    factory = PluginManager().device_registry().get("virtio-net")
    with pytest.raises(ConfigError, match="guest_mac"):
        factory.validate({**GOOD, "guest_mac": "nope"})


def test_validate_refuses_non_object():
    with pytest.raises(ConfigError, match="must be an object"):
        validate(["tap0"])


# --- conformance -------------------------------------------------------------------------

class TestConformance(VirtioConformance):
    expected_device_id = V.ID_NET
    processed_on_kick = (1,)  # TX; RX buffers wait for frames

    def make_device(self, tmp_path):
        return VirtioNet(PairTap(), ManualLoop(), mac=MAC, mtu=1500)


# --- device against a socketpair ---------------------------------------------------------

@pytest.fixture
def pair():
    mem, tap, loop = GuestMemory(8 << 20), PairTap(), ManualLoop()
    made = []

    def make(features=None, drop=1 << V.F_EVENT_IDX, **kw):
        # as the builder does: the device sees the loop through its error boundary
        boundary = ErrorBoundary("virtio-net:test")
        dev = VirtioNet(tap, DeviceLoop(loop, boundary), mac=MAC, **kw)
        t = VirtioMmioTransport(dev, memory=mem, irq=CountingIrq(), event_loop=loop,
                                boundary=boundary)
        drv = GuestDriver(t, mem)
        drv.init(features=features, drop=drop)
        loop.run_once()
        made.append(t)
        return dev, t, drv

    yield make, mem, tap, loop
    for t in made:
        t.close()
        t.device.close()  # the transport releases its fds; the device is its owner's
    loop.close()
    mem.close()


def test_config_space_and_features():
    dev = VirtioNet(PairTap(), ManualLoop(), mac=MAC, mtu=1400)
    assert dev.config_bytes() == MAC + struct.pack("<HHH", C.S_LINK_UP, 1, 1400)
    assert dev.features >> C.F_MAC & 1 and dev.features >> C.F_MTU & 1
    bare = VirtioNet(PairTap(), ManualLoop())
    assert not bare.features >> C.F_MAC & 1 and not bare.features >> C.F_MTU & 1
    assert bare.features >> C.F_STATUS & 1 and bare.features >> C.F_MRG_RXBUF & 1
    dev.close()
    bare.close()


def test_tap_offloads_follow_acked_guest_features(pair):
    make, _, tap, _ = pair
    offered = (1 << V.F_VERSION_1) | (1 << C.F_GUEST_CSUM) | (1 << C.F_GUEST_TSO4)
    make(features=offered)
    assert tap.offloads[-1] == 0x01 | 0x02  # TUN_F_CSUM | TUN_F_TSO4


def test_tx_chain_without_header_is_malformed(pair):
    make, mem, tap, _ = pair
    dev, t, drv = make()
    txq = drv.queues[C.TX_QUEUE]
    buf = drv.alloc(8)
    txq.add([(buf, 8)], [])
    txq.kick()
    assert [n for _, n in txq.take_used()] == [0]
    assert dev.stats.tx_malformed == 1 and dev.stats.tx_packets == 0


def test_tx_write_failure_is_counted(pair):
    make, mem, tap, _ = pair
    dev, t, drv = make()
    tap.peer.close()  # writes now fail (ECONNREFUSED), like a TAP that went away
    txq = drv.queues[C.TX_QUEUE]
    buf = drv.alloc(80)
    txq.add([(buf, 80)], [])
    txq.kick()
    assert dev.stats.tx_dropped == 1 and len(txq.take_used()) == 1


def test_rx_clears_checksum_hints_without_guest_csum(pair):
    make, mem, tap, loop = pair
    feats = (1 << V.F_VERSION_1) | (1 << C.F_MAC)
    dev, t, drv = make(features=feats)
    rxq = drv.queues[C.RX_QUEUE]
    buf = drv.alloc(2048)
    rxq.add([], [(buf, 2048)])
    rxq.kick()
    tap.peer.send(bytes([2]) + bytes(11) + b"F" * 60)  # DATA_VALID from the "TAP"
    loop.run_until(lambda: dev.stats.rx_packets == 1)
    hdr = mem.read(buf, 12)
    assert hdr[0] == 0 and struct.unpack_from("<H", hdr, 10)[0] == 1
    assert rxq.take_used()[0][1] == 72


def test_rx_tiny_buffer_is_returned_empty_and_counted(pair):
    make, mem, tap, loop = pair
    dev, t, drv = make()
    rxq = drv.queues[C.RX_QUEUE]
    small, big = drv.alloc(8), drv.alloc(2048)
    rxq.add([], [(small, 8)])
    rxq.add([], [(big, 2048)])
    rxq.kick()
    tap.peer.send(bytes(12) + b"x" * 100)
    loop.run_until(lambda: dev.stats.rx_packets == 1)
    used = dict(rxq.take_used())
    assert sorted(used.values()) == [0, 112] and dev.stats.rx_bad_buffers == 1


def test_hostile_rx_chain_from_tap_wakeup_fails_device_quietly(pair):
    make, mem, tap, loop = pair
    dev, t, drv = make()
    rxq = drv.queues[C.RX_QUEUE]
    buf = drv.alloc(64)
    _DESC.pack_into(mem.view(rxq.desc, 16), 0, buf, 64, V.DESC_F_NEXT | V.DESC_F_WRITE, 0)
    rxq.post(0)  # descriptor 0 chains to itself; no kick — the TAP wakes the device
    dev.event_loop.call_soon(dev.on_tap_readable)   # a host-side wake-up, as the loop runs it
    loop.run_once()         # ... inside the device's error boundary
    assert t.read(V.STATUS, 4) & V.S_NEEDS_RESET and not dev.rx.polling
    assert t.boundary.failures == 1
    tap.peer.send(bytes(12) + b"late")
    loop.run_once(0.05)  # nothing registered, nothing raised
    assert dev.stats.rx_packets == 0


def test_update_rate_limiters(pair):
    make, _, _, loop = pair
    existing = FakeLimiter()
    built = []
    dev, _, _ = make(tx_limiter=existing,
                     limiter_factory=lambda cfg: built.append(cfg) or FakeLimiter())
    dev.update_rate_limiters(rx={"ops": {"size": 5, "refill_time": 100}},
                             tx={"bandwidth": {"size": 1, "refill_time": 1}})
    assert existing.updates == [{"bandwidth": {"size": 1, "refill_time": 1}}]
    assert built == [{"ops": {"size": 5, "refill_time": 100}}] and dev.rx_limiter.wakeup
    loop.run_once()
    dev.close()
    assert existing.closed and dev.rx_limiter.closed


def test_rx_header_split_across_descriptors(pair):
    make, mem, tap, loop = pair
    dev, t, drv = make(features=(1 << V.F_VERSION_1))  # no GUEST_CSUM: flags must be cleared
    rxq = drv.queues[C.RX_QUEUE]
    a, b = drv.alloc(5), drv.alloc(2048)
    rxq.add([], [(a, 5), (b, 2048)])
    rxq.kick()
    tap.peer.send(bytes([2]) + bytes(11) + b"payload")
    loop.run_until(lambda: dev.stats.rx_packets == 1)
    got = mem.read(a, 5) + mem.read(b, 14)
    assert got[0] == 0 and got[10:12] == b"\x01\x00" and got[12:] == b"payload"
    assert [n for _, n in rxq.take_used()] == [19]


# --- property: any buffer layout gets the frame intact, or a counted drop -----------------


@settings(max_examples=60, deadline=None)
@given(layouts=st.lists(st.lists(st.integers(1, 3000), min_size=1, max_size=4),
                        min_size=1, max_size=5),
       size=st.integers(0, 8000), mergeable=st.booleans(), data=st.randoms())
def test_rx_scatter_property(layouts, size, mergeable, data):
    mem, tap, loop = GuestMemory(8 << 20), PairTap(), ManualLoop()
    feats = (1 << V.F_VERSION_1) | (1 << C.F_GUEST_CSUM) | (mergeable << C.F_MRG_RXBUF)
    dev = VirtioNet(tap, loop)
    t = VirtioMmioTransport(dev, memory=mem, irq=CountingIrq(), event_loop=loop)
    try:
        drv = GuestDriver(t, mem)
        drv.init(features=feats)
        rxq = drv.queues[C.RX_QUEUE]
        bufs = {}
        for layout in layouts:
            parts = [(drv.alloc(n), n) for n in layout]
            bufs[rxq.add([], parts)] = parts
        rxq.kick()
        frame = bytes([1]) + bytes(11) + data.randbytes(size)
        tap.peer.send(frame)
        loop.run_until(lambda: dev.stats.rx_packets or dev.stats.rx_dropped or dev.rx.pending
                       or dev.stats.rx_bad_buffers == len(layouts))
        used = rxq.take_used()
        got = b"".join(mem.read(a, n) for h, k in used for a, n in _take(bufs[h], k))
        caps = [sum(layout) for layout in layouts]
        first = next((i for i, c in enumerate(caps) if c >= 12), None)  # holds the header
        room = 0 if first is None else sum(caps[first:]) if mergeable else caps[first]
        fits = first is not None and room >= len(frame)
        if dev.stats.rx_packets:
            assert fits and got[12:] == frame[12:] and got[0] == 1
            assert struct.unpack_from("<H", got, 10)[0] == len([k for _, k in used if k])
        else:
            assert not fits and t.failure is None
    finally:
        t.close()
        t.device.close()  # the transport releases its fds; the device is its owner's
        loop.close()
        mem.close()


def _take(parts, k):
    for addr, n in parts:
        if k <= 0:
            return
        yield addr, min(n, k)
        k -= n
