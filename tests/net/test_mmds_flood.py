"""A guest flooding MMDS through the real net device: memory stays bounded, the device
loop keeps serving, and service is normal afterwards.

The guest is a network namespace behind GuestBridge (nodesvc_virtio_net.testing): raw
frames sent on its eth0 with an AF_PACKET socket become the device's TX chains, exactly as
a guest driver's would. The flood mixes SYNs from spoofed addresses (random ports and
sequence numbers; their SYN-ACKs go to MACs nobody has, so each one is a half-open
connection until the stack gives up on it), garbage TCP segments (random flags, numbers,
header lengths, options, payloads), garbage IPv4 to the MMDS address, and ARP (requests
from random senders, malformed ones). A second flood opens real kernel connections that
send part of a request and then sit there. Meanwhile a legitimate urllib/curl client in
the same namespace must get its answer within a bounded wait.

What is asserted is the stack's own state (connections, queued RSTs, receive and send
buffers, the ARP slot, the device's RX backlog), sampled all along the flood, plus the
process's RSS growth across a flood after a warm-up one. Frame-level parsing of hostile
input is the atheris target's job (fuzz/virtio_net.py); this is about load and state.
Every loop is bounded; both namespaces go away with the rig.
"""

from __future__ import annotations

import random
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from nodesvc.mmds import tcp
from nodesvc.mmds.config import MmdsConfig
from nodesvc.mmds.stack import ARP_PENDING_MAX, DEFAULT_MAC
from nodesvc.mmds.vm import VmMmds
from nodesvc.vmm.virtio import constants as V
from nodesvc_virtio_net import constants as C
from nodesvc_virtio_net.testing import GUEST_IP, GUEST_MAC, HOST_IP, GuestBridge

MMDS_IP = "169.254.169.254"
URL = f"http://{MMDS_IP}"
DOC = {"latest": {"meta-data": {"ami-id": "ami-0abc", "instance-id": "i-flood"}}}
FEATURES = (1 << C.F_MAC) | (1 << C.F_STATUS) | (1 << V.F_VERSION_1)
CURL = shutil.which("curl")
MMDS_MAC = bytes.fromhex(DEFAULT_MAC.replace(":", ""))
MMDS_IP_B = socket.inet_aton(MMDS_IP)
BATCH = 100                 # frames per burst: well inside the guest TAP's queue
RSS_GROWTH_MAX = 4 << 20    # measured: under 100 KiB; a leak of 350 B a frame trips it


# -- frames ------------------------------------------------------------------------------

def _ip(src: bytes, proto: int, payload: bytes, *, vihl=0x45, frag=0x4000,
        total: int | None = None) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", vihl, 0, 20 + len(payload) if total is None else total,
                       0, frag, 64, proto, 0, src, MMDS_IP_B) + payload


def _eth(src_mac: bytes, ethertype: int, payload: bytes, dst=MMDS_MAC) -> bytes:
    return dst + src_mac + struct.pack("!H", ethertype) + payload


def spoofed() -> tuple[bytes, bytes]:
    """A locally administered unicast MAC and a TEST-NET-2 address nobody in the guest has."""
    mac = bytes([0x02, 0x66]) + random.randbytes(4)
    return mac, socket.inet_aton(f"198.51.100.{random.randrange(1, 255)}")


def syn_frame() -> bytes:
    mac, ip = spoofed()
    seg = tcp.build_segment(ip, MMDS_IP_B, random.randrange(1024, 65536), 80,
                            random.getrandbits(32), 0, tcp.SYN, random.randrange(0, 65536),
                            mss=random.choice((None, 1, 536, 1460, 65535)))
    return _eth(mac, 0x0800, _ip(ip, 6, seg))


def garbage_tcp_frame() -> bytes:
    # from the guest's own address half the time: its kernel then sees our RSTs and ignores them
    mac, ip = (GUEST_MAC, socket.inet_aton(GUEST_IP)) if random.random() < 0.5 else spoofed()
    off = random.choice((0, 1, 4, 5, 6, 15)) << 4
    hdr = struct.pack("!HHIIBBHHH", random.randrange(65536), random.choice((80, 80, 22, 0)),
                      random.getrandbits(32), random.getrandbits(32), off,
                      random.getrandbits(8) & ~tcp.SYN | random.choice((0, 0, tcp.SYN)),
                      random.randrange(65536), random.getrandbits(16), 0)
    opts = random.randbytes(random.choice((0, 4, 20)))
    return _eth(mac, 0x0800, _ip(ip, 6, hdr + opts + random.randbytes(random.randrange(200))))


def garbage_ip_frame() -> bytes:
    mac, ip = spoofed()
    kind = random.randrange(4)
    if kind == 0:
        return _eth(mac, 0x0800, _ip(ip, 17, random.randbytes(40)))           # UDP
    if kind == 1:
        return _eth(mac, 0x0800, _ip(ip, 1, b"\x08\0" + random.randbytes(30)))  # ping
    if kind == 2:
        return _eth(mac, 0x0800, _ip(ip, 6, random.randbytes(40), frag=0x2000))  # fragment
    return _eth(mac, 0x0800, _ip(ip, 6, random.randbytes(40), vihl=random.choice((0x4F, 0x65)),
                                 total=random.randrange(65536)))


def arp_frame() -> bytes:
    mac, ip = spoofed()
    op, hlen = (1, 6) if random.random() < 0.7 else random.choice(((2, 6), (1, 8), (9, 6)))
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, hlen, 4, op, mac, ip, bytes(6), MMDS_IP_B)
    return _eth(mac, 0x0806, body, dst=b"\xff" * 6)


MIX = (syn_frame,) * 5 + (garbage_tcp_frame,) * 3 + (garbage_ip_frame, arp_frame)


# -- the rig -----------------------------------------------------------------------------

def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS in /proc/self/status")


class Peak:
    """The largest size each bounded thing reached while it was sampled."""

    def __init__(self):
        self.values: dict[str, int] = {}

    def see(self, name: str, value: int) -> None:
        self.values[name] = max(self.values.get(name, 0), value)

    def __getitem__(self, name: str) -> int:
        return self.values.get(name, 0)


class Flood:
    def __init__(self, rig, vm_mmds, bridge):
        self.rig, self.vm_mmds, self.bridge, self.mmds = rig, vm_mmds, bridge, vm_mmds.mmds
        self.peak = Peak()
        self.sent = self.refused = 0
        self.raw = bridge.ns.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)   # 0: send only
        self.raw.bind((GuestBridge.TAP, 0))
        self.slots = len(bridge.tx_free) + len(bridge.tx_slot)
        rig.closers.append(self.raw.close)

    @property
    def stack(self):
        return self.rig.dev.mmds.stack

    def seen(self) -> int:
        return self.stack.stats["rx_frames"]

    def sample(self) -> None:
        """Every size the guest could try to grow (read from another thread: sizes only)."""
        st, rx = self.stack, self.rig.dev.rx
        conns = list(st.tcp.connections.values())
        self.peak.see("connections", len(conns))
        self.peak.see("resets", len(st.tcp.resets))
        self.peak.see("rbuf", max((len(c.rbuf) for c, _ in conns), default=0))
        self.peak.see("held_bytes", sum(len(c.rbuf) + len(c.out) for c, _ in conns))
        self.peak.see("arp_replies", len(st.arp_replies))
        self.peak.see("rx_injected", len(rx.injected) if rx is not None else 0)
        self.peak.see("rx_held_chains", len(rx.held) if rx is not None else 0)
        self.peak.see("bridge_tx_in_flight", len(self.bridge.tx_slot))

    def run(self, frames: int, make=lambda: random.choice(MIX)(),
            stop: threading.Event | None = None) -> int:
        """Send `frames` flood frames in bursts, each burst once the device has taken the
        last one (bounded wait), sampling the stack between bursts. Returns frames seen."""
        start, sent = self.seen(), 0
        while sent < frames and not (stop is not None and stop.is_set()):
            for _ in range(min(BATCH, frames - sent)):
                try:
                    self.raw.send(make())
                    sent += 1
                except OSError:            # ENOBUFS: the guest's own qdisc is full
                    self.refused += 1
                    time.sleep(0.001)
            deadline = time.monotonic() + 2.0
            while self.seen() - start < sent * 0.98 and time.monotonic() < deadline:
                time.sleep(0.001)
            self.sample()
        self.sent += sent
        return self.seen() - start

    def background(self, frames: int, make=lambda: random.choice(MIX)()):
        """The flood on a thread: (thread, stop event, result box)."""
        stop, box = threading.Event(), {}

        def go():
            try:
                box["seen"] = self.run(frames, make, stop=stop)
            except BaseException as e:
                box["error"] = e
        t = threading.Thread(target=go, name="mmds-flood", daemon=True)
        t.start()
        return t, stop, box

    def get(self, path: str = "/latest/meta-data/instance-id", timeout: float = 10.0):
        """(status, body) for a keep-alive-less urllib GET from the guest."""
        def call():
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(URL + path, timeout=timeout) as r:
                return r.status, r.read()
        return self.bridge.ns.run(call)

    def check_bounds(self) -> None:
        p = self.peak
        assert p["connections"] <= tcp.MAX_CONNECTIONS, p.values
        assert p["resets"] <= tcp.MAX_PENDING_RESETS, p.values
        assert p["rbuf"] <= tcp.RCV_BUF_MAX_SIZE, p.values
        doc_max = self.mmds.store.limit + 512      # a response: the document and its headers
        assert p["held_bytes"] <= tcp.MAX_CONNECTIONS * (tcp.RCV_BUF_MAX_SIZE + doc_max), p.values
        assert p["arp_replies"] <= ARP_PENDING_MAX and p["rx_injected"] == 0, p.values
        assert p["rx_held_chains"] <= 1, p.values       # no MRG_RXBUF: one chain per frame
        assert p["bridge_tx_in_flight"] <= self.slots, p.values

    def drained(self) -> bool:
        st = self.stack
        return not st.tcp.connections and not st.tcp.resets and not st.arp_replies


def wait_for(cond, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def flood(make_rig):
    vm_mmds = VmMmds(MmdsConfig(("eth0",)), "flood-vm")
    vm_mmds.mmds.put(DOC)
    rig = make_rig(features=FEATURES, mmds_stack=vm_mmds.stack_factory("eth0"))
    bridge = GuestBridge(rig)
    rig.closers.append(bridge.close)
    bridge.route(f"{MMDS_IP}/32")
    bridge.start()
    f = Flood(rig, vm_mmds, bridge)
    assert f.get() == (200, b"i-flood")       # the guest's neighbour entry is now resolved
    random.seed(10)
    return f


def test_mixed_flood_stays_bounded_and_a_get_gets_through(flood):
    flood.run(3000)                           # warm-up: allocator arenas, caches
    before = rss()
    t, stop, box = flood.background(12000)
    try:
        wait_for(lambda: flood.stack.stats["rx_frames"] > 4000,
                 "the flood to be under way", 60)
        during = flood.get()                  # the device loop is not starved by the flood
        seen_at_get = flood.stack.stats["rx_frames"]
    finally:
        t.join(120)
        stop.set()
    assert not t.is_alive() and "error" not in box, box
    assert during == (200, b"i-flood")
    assert box["seen"] >= 0.95 * 12000, (box, flood.refused)
    assert flood.stack.stats["rx_frames"] > seen_at_get     # the GET was inside the flood
    growth = rss() - before
    print(f"flood: {box['seen']} frames seen, RSS +{growth >> 10} KiB, peaks {flood.peak.values}")
    flood.check_bounds()
    tstats = flood.stack.tcp.stats
    # the table filled; SYNs beyond it got stateless cookies; garbage got (bounded) RSTs
    assert tstats["cookie_sent"] > 1000 and tstats["unexpected"] > 500, tstats
    assert growth < RSS_GROWTH_MAX, f"RSS grew {growth >> 10} KiB over a 12000-frame flood"
    # the spoofed half-open connections give up (15 RTOs) and everything drains
    wait_for(flood.drained, "the stack to drain", 15)
    assert flood.get() == (200, b"i-flood")
    assert flood.rig.dev.failed is None


def test_syn_flood_does_not_lock_out_a_legitimate_client(flood):
    """Spoofed SYNs alone, back to back: every slot is always a fresh half-open connection,
    so a new client only gets in if the stack gives a SYN a slot over those."""
    t, stop, box = flood.background(8000)
    try:
        wait_for(lambda: flood.stack.stats["rx_frames"] > 2000 and
                 len(flood.stack.tcp.connections) >= tcp.MAX_CONNECTIONS, "a full table", 60)
        results = [flood.get(timeout=5) for _ in range(5)]
    finally:
        stop.set()
        t.join(60)
    assert "error" not in box, box
    assert results == [(200, b"i-flood")] * 5
    flood.check_bounds()
    wait_for(flood.drained, "the stack to drain", 15)


def test_half_open_kernel_connections_are_bounded_then_evicted(flood):
    """Real connections (the guest's kernel completes the handshake) that send most of a
    request and then nothing: they fill every slot and the receive buffers, but no more;
    a new client gets in once one of them has idled past the eviction time; closing them
    lets everything drain."""
    partial = b"GET /latest/meta-data/ HTTP/1.1\r\nX-Pad: " + b"p" * 2300   # no end of headers
    socks, refused = [], 0

    def open_all():
        nonlocal refused
        for _ in range(tcp.MAX_CONNECTIONS + 20):
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect((MMDS_IP, 80))
                s.sendall(partial)
                socks.append(s)
            except OSError:
                refused += 1
                s.close()
    try:
        flood.bridge.ns.run(open_all)
        wait_for(lambda: sum(len(c.rbuf) for c, _ in flood.stack.tcp.connections.values())
                 >= tcp.MAX_CONNECTIONS * len(partial), "the partial requests to arrive")
        flood.sample()
        flood.check_bounds()
        assert flood.peak["connections"] == tcp.MAX_CONNECTIONS
        # more connections than slots were tried; the kernel may hold a few as "connected"
        # until its first data is reset, so count those the stack turned away either way
        assert refused + len(socks) == tcp.MAX_CONNECTIONS + 20
        assert flood.stack.tcp.stats["refused"] >= 20 - refused
        # a legitimate client: refused while they are fresh, served once one idled out
        deadline, attempts, got = time.monotonic() + tcp.EVICTION_IDLE_SECONDS + 15, 0, None
        while got is None and time.monotonic() < deadline:
            attempts += 1
            try:
                got = flood.get(timeout=5)
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                time.sleep(0.5)
        assert got == (200, b"i-flood"), attempts
        assert flood.stack.tcp.stats["evicted"] >= 1
    finally:
        for s in socks:
            s.close()
    wait_for(flood.drained, "the half-open connections to close", 15)
    assert flood.get() == (200, b"i-flood")


@pytest.mark.skipif(CURL is None, reason="curl is not installed (scripts/install-sysdeps)")
def test_curl_and_ordinary_traffic_during_a_flood(flood):
    """curl to MMDS and a UDP datagram to the host both get through while the flood runs."""
    host = flood.rig.host_socket(5312)
    g = flood.bridge.ns.socket()
    flood.rig.closers.append(g.close)
    t, stop, box = flood.background(6000)
    try:
        wait_for(lambda: flood.stack.stats["rx_frames"] > 1500, "the flood to be under way", 60)
        r = subprocess.run(["ip", "netns", "exec", flood.bridge.ns.name, CURL, "-sS",
                            "--noproxy", "*", "-m", "10", f"{URL}/latest/meta-data/ami-id"],
                           capture_output=True, text=True, timeout=20)
        g.sendto(b"still here", (HOST_IP, 5312))
        datagram = host.recvfrom(100)[0]
    finally:
        stop.set()
        t.join(60)
    assert "error" not in box, box
    assert (r.returncode, r.stdout) == (0, "ami-0abc"), r.stderr
    assert datagram == b"still here"
    flood.check_bounds()


def test_guest_resolves_mmds_during_an_arp_flood(flood):
    """ARP requests from many senders do not crowd out the guest's own: with its
    neighbour entry gone and a single ARP try allowed, the guest resolves the MMDS address
    again mid-flood. (Keeping only the latest request, as Firecracker does, loses the
    guest's whenever another comes after it in the same TX pass.)"""
    flood.bridge.ns.sysctl(f"net.ipv4.neigh.{GuestBridge.TAP}.mcast_solicit", 1)
    t, stop, box = flood.background(20000, make=lambda: random.choice((arp_frame, syn_frame))())
    try:
        wait_for(lambda: flood.stack.stats["rx_frames"] > 2000, "the flood to be under way", 60)
        subprocess.run(["ip", "-n", flood.bridge.ns.name, "neigh", "flush", "dev",
                        GuestBridge.TAP], check=True, timeout=10)
        got = flood.get(timeout=10)
    finally:
        stop.set()
        t.join(60)
    assert "error" not in box, box
    assert got == (200, b"i-flood")
    assert flood.stack.stats["tx_arp"] > 500 and flood.stack.stats["arp_dropped"] == 0
    flood.check_bounds()
