"""A virtio-net device on a real TAP in a throw-away netns, driven in-process (tests, bench).

Everything runs on the caller's thread: `nodesvc.testing.ManualLoop` stands in for the VMM's
event loop (it polls the fds the device registered), and the in-process guest
driver kicks queues synchronously, so the device model is measured alone.
Addresses are TEST-NET-1 and exist only inside the namespace the rig creates.
"""

from __future__ import annotations

import socket
import struct
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
                 mem_mib: int = 32, txqueuelen: int | None = None, loop=None):
        self.ns = NetNamespace("vnet")
        self.closers: list[Callable] = [self.ns.close]
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
                             rx_limiter=rx_limiter, tx_limiter=tx_limiter)
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
