"""A virtio-net device on a real TAP in a throw-away netns, driven in-process (tests, bench).

Everything runs on the caller's thread: `nodesvc.testing.ManualLoop` stands in for the VMM's
event loop (it polls the fds the device registered), and the in-process guest
driver kicks queues synchronously, so the device model is measured alone.
Addresses are TEST-NET-1 and exist only inside the namespace the rig creates.
`GuestBridge` puts a second namespace on the guest side: its kernel becomes the guest.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from typing import Callable

from nodesvc.net import frames, open_tap
from nodesvc.net.netns import NetNamespace
from nodesvc.testing import CountingIrq, GuestDriver, ManualLoop
from nodesvc.vmm.memory import GuestMemory
from nodesvc.vmm.virtio import VirtioMmioTransport, constants as V
from nodesvc.vmm.virtio.queue import _DESC

from .config import format_mac
from .constants import RX_QUEUE, TX_QUEUE
from .device import VirtioNet

HOST_IP, GUEST_IP = "192.0.2.1", "192.0.2.2"
GUEST_MAC = bytes.fromhex("020000000002")
TAP_NAME = "vnet0"
HDR = bytes(12)


class NetRig:
    """netns + TAP (host side 192.0.2.1/24) + VirtioNet + GuestDriver (guest 192.0.2.2)."""

    def __init__(self, *, mtu: int | None = None, rx_limiter=None, tx_limiter=None,
                 features: int | None = None, drop: int = 1 << V.F_EVENT_IDX,
                 mem_mib: int = 32, txqueuelen: int | None = None, loop=None,
                 mmds_stack: Callable | None = None):
        self.ns = NetNamespace("vnet")
        self.closers: list[Callable] = [self.ns.close]
        self.mmds_stack = mmds_stack
        try:
            self._setup(mtu, rx_limiter, tx_limiter, features, drop, mem_mib, txqueuelen, loop)
        except BaseException:
            self.close()
            raise

    def _setup(self, mtu, rx_limiter, tx_limiter, features, drop, mem_mib, txqueuelen,
               loop) -> None:
        ns = self.ns
        ns.create_tap(TAP_NAME, mtu=mtu, up=False)
        ns.sysctl(f"net.ipv6.conf.{TAP_NAME}.disable_ipv6", 1)  # no RS/MLD chatter
        if txqueuelen:
            with ns.ipr() as ip:
                ip.link("set", index=ip.link_lookup(ifname=TAP_NAME)[0], txqlen=txqueuelen)
        ns.add_address(TAP_NAME, HOST_IP, 24)
        ns.add_neighbour(TAP_NAME, GUEST_IP, format_mac(GUEST_MAC))
        self.tap = open_tap(TAP_NAME, ns.name)
        ns.set_link(TAP_NAME, up=True)
        self.host_mac = frames.mac_bytes(ns.link_info(TAP_NAME)["mac"])
        if loop is None:  # else the caller's (e.g. the VMM's EventLoop), which it closes
            loop = ManualLoop()
            self.closers.append(loop.close)
        self.loop = loop
        self.mem = GuestMemory(mem_mib << 20)
        self.closers.append(self.mem.close)
        self.dev = VirtioNet(self.tap, self.loop, mac=GUEST_MAC, mtu=mtu,
                             rx_limiter=rx_limiter, tx_limiter=tx_limiter,
                             mmds_stack=self.mmds_stack)
        self.closers.append(self.dev.close)
        self.irq = CountingIrq()
        self.transport = VirtioMmioTransport(self.dev, memory=self.mem, irq=self.irq,
                                             event_loop=self.loop, name="vnet-test")
        self.drv = GuestDriver(self.transport, self.mem)
        self.features = self.drv.init(features=features, drop=drop)
        if isinstance(self.loop, ManualLoop):
            self.loop.run_once()
        self.rxq, self.txq = self.drv.queues[RX_QUEUE], self.drv.queues[TX_QUEUE]

    # -- host side ------------------------------------------------------------------------
    def host_socket(self, port: int = 0) -> socket.socket:
        s = self.ns.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.closers.append(s.close)
        s.bind((HOST_IP, port))
        s.settimeout(2.0)
        return s

    # -- guest side -----------------------------------------------------------------------
    def udp_to_host(self, dport: int, payload: bytes, sport: int = 40000) -> bytes:
        return frames.udp_frame(GUEST_MAC, self.host_mac, GUEST_IP, HOST_IP, sport, dport,
                                payload)

    def post_tx(self, frame: bytes, hdr: bytes = HDR, split: int | None = None) -> int:
        """Queue a TX chain: header + frame (in two buffers when `split`), without kicking."""
        data = hdr + frame
        cut = split if split is not None else len(hdr)
        bufs = []
        for part in (data[:cut], data[cut:]):
            if part:
                addr = self.drv.alloc(len(part))
                self.mem.write(addr, part)
                bufs.append((addr, len(part)))
        return self.txq.add(bufs, [])

    def post_rx(self, count: int, size: int = 2048) -> list[int]:
        """Post `count` single-buffer RX chains of `size` bytes (no kick); returns heads."""
        heads = []
        self.rx_bufs = getattr(self, "rx_bufs", {})
        for _ in range(count):
            addr = self.drv.alloc(size)
            head = self.rxq.add([], [(addr, size)])
            self.rx_bufs[head] = addr
            heads.append(head)
        return heads

    def take_rx(self) -> list[tuple[bytes, bytes]]:
        """(virtio_net_hdr, frame) for each used RX chain (single-buffer chains only)."""
        out = []
        for head, n in self.rxq.take_used():
            data = self.mem.read(self.rx_bufs[head], n) if n else b""
            out.append((data[:12], data[12:]))
        return out

    def close(self) -> None:
        while self.closers:
            try:
                self.closers.pop()()
            except Exception:
                pass


def fixed_ring(drv_queue, mem, addrs: list[int], size: int, writable: bool) -> None:
    """Point descriptor i at buffer addrs[i] once, so reposting a buffer is one ring write."""
    flags = V.DESC_F_WRITE if writable else 0
    for i, addr in enumerate(addrs):
        _DESC.pack_into(mem.view(drv_queue.desc + 16 * i, 16), 0, addr, size, flags, 0)
    drv_queue.free = []


def used_heads(drv_queue, mem) -> list[tuple[int, int]]:
    """Used (head, len) since last call, without DriverQueue's chain bookkeeping."""
    idx, out = mem.read_u16(drv_queue.used + 2), []
    while drv_queue.last_used != idx:
        slot = drv_queue.used + 4 + 8 * (drv_queue.last_used % drv_queue.size)
        out.append(struct.unpack_from("<II", mem.view(slot, 8)))
        drv_queue.last_used = (drv_queue.last_used + 1) & 0xFFFF
    return out


class GuestBridge:
    """A network namespace standing in for the guest: its kernel's eth0 is a TAP whose
    frames become the rig's TX chains, and whatever the device completes on RX is written
    back into that TAP. So real clients (curl, urllib, the Linux TCP stack) in `ns` talk
    through the device model exactly as a guest's driver would.

    Runs the rig's ManualLoop and the driver on one thread (`run`, bounded by `stop`):
    fixed 2 KiB buffers, `slots` of them per queue; TX waits in the TAP's own queue while
    every TX buffer is in flight. The guest TAP has no vnet header and no offloads, so
    every frame fits a buffer and every checksum is complete.
    """

    SLOT = 2048
    TAP = "geth0"

    def __init__(self, rig: NetRig, ip: str = GUEST_IP, prefix: int = 24, slots: int = 128,
                 on_start: Callable[[], None] | None = None):
        self.rig, self.ip, self.on_start = rig, ip, on_start
        self.ns = NetNamespace("vguest")
        self.tx_frames = self.rx_frames = 0
        self.write_errors: list[int] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        try:
            self.ns.create_tap(self.TAP, up=False)
            self.ns.sysctl(f"net.ipv6.conf.{self.TAP}.disable_ipv6", 1)
            self.ns.set_link(self.TAP, mac=format_mac(GUEST_MAC))
            self.ns.add_address(self.TAP, ip, prefix)
            self.tap = open_tap(self.TAP, self.ns.name, vnet_hdr=False)
            self.ns.set_link(self.TAP, up=True)
            self.ns.set_link("lo", up=True)
            self.tx_free = [rig.drv.alloc(self.SLOT) for _ in range(slots)]
            self.tx_slot: dict[int, int] = {}
            self.rx_slot: dict[int, int] = {}
            for _ in range(slots):
                self._post_rx(rig.drv.alloc(self.SLOT))
            rig.rxq.kick()
            rig.loop.add_reader(self.tap.fd, self._guest_sent)
        except BaseException:
            self.close()
            raise
        self.thread = threading.Thread(target=self.run, name="guest-bridge", daemon=True)

    def route(self, dst: str) -> None:
        """Send `dst` (e.g. "169.254.169.254/32") out of the guest's eth0, on link."""
        with self.ns.ipr() as ip:
            ip.route("add", dst=dst, oif=ip.link_lookup(ifname=self.TAP)[0])

    def start(self) -> "GuestBridge":
        self.thread.start()
        return self

    # -- the pump ------------------------------------------------------------------------
    def run(self) -> None:
        try:
            if self.on_start is not None:   # e.g. the VMM loop thread's seccomp filter
                self.on_start()
            while not self._stop.is_set():
                self.rig.loop.run_once(0.05)
                self._reap()
        except BaseException as e:      # surfaced by close()
            self.error = e

    def _post_rx(self, addr: int) -> None:
        self.rx_slot[self.rig.rxq.add([], [(addr, self.SLOT)])] = addr

    def _guest_sent(self, _events: int = 0) -> None:
        rig, posted = self.rig, 0
        while self.tx_free:
            try:
                frame = os.read(self.tap.fd, self.SLOT)
            except BlockingIOError:
                break
            addr = self.tx_free.pop()
            rig.mem.write(addr, HDR + frame[:self.SLOT - len(HDR)])
            self.tx_slot[rig.txq.add([(addr, len(HDR) + len(frame))], [])] = addr
            posted += 1
        if posted:
            self.tx_frames += posted
            rig.txq.kick()
        if not self.tx_free:        # resume once buffers come back (level-triggered fd)
            rig.loop.remove_reader(self.tap.fd)

    def _reap(self) -> None:
        rig = self.rig
        for head, _ in rig.txq.take_used():
            self.tx_free.append(self.tx_slot.pop(head))
        if self.tx_free and self.tap.fd not in rig.loop.readers:
            rig.loop.add_reader(self.tap.fd, self._guest_sent)
        # every buffer first: reposting reuses the descriptors take_used just freed
        used = [(self.rx_slot.pop(head), n) for head, n in rig.rxq.take_used()]
        for addr, n in used:
            if n > len(HDR):
                try:
                    os.write(self.tap.fd, rig.mem.read(addr + len(HDR), n - len(HDR)))
                    self.rx_frames += 1
                except OSError as e:   # the guest kernel refused it: lost, as on a wire
                    self.write_errors.append(e.errno)
        for addr, _ in used:
            self._post_rx(addr)
        if used:
            rig.rxq.kick()

    def close(self) -> None:
        self._stop.set()
        if self.thread.ident is not None:
            self.thread.join(5)
        try:
            if self.thread.is_alive():
                raise AssertionError("guest bridge thread did not stop")
            if self.error is not None:
                raise self.error
        finally:
            tap = getattr(self, "tap", None)
            if tap is not None:
                self.rig.loop.remove_reader(tap.fd)
                tap.close()
            self.ns.close()
