"""Ethernet/ARP/IPv4 in front of the TCP handler: what the net device talks to.

The device calls, on its event-loop thread:

    if stack.detour(frame):        # guest TX frame for the MMDS address?
        stack.handle(frame)        # consumed here; never reaches the TAP or the limiter
    ...
    frame = stack.pending_rx()     # while the guest has RX buffers; None = nothing now
    stack.next_deadline()          # monotonic seconds when pending_rx may have a
                                   # retransmission, or None: arm a timer for it

`detour` only looks at fixed offsets (ethertype, ARP target, IPv4 destination),
like Firecracker's speculative checks, so it costs next to nothing on frames
that are not ours; `take(frame)` is both calls in one, usable as a TX filter.
Frames to the MMDS address that are not well-formed ARP requests or TCP are
dropped (counted), never passed on. Output order is Firecracker's: the ARP
replies first (the latest request of each sender MAC, up to ARP_PENDING_MAX senders),
then TCP. Replies come from MAC
06:01:23:45:67:01 with IP TTL 1. Not supported, as in Firecracker: VLAN tags,
IP fragments (dropped), IP options are skipped.

Checksums: a guest that negotiated checksum offload hands over TCP segments
whose checksum covers only the pseudo-header, so TCP checksums are not checked
unless `verify_checksums=True` (for peers that always fill them, like a TAP's
host kernel); the IPv4 header checksum is checked under the same flag. All
checksums we send are complete.
"""

from __future__ import annotations

import collections
import ipaddress
import socket
import struct
import time
from typing import Callable

from . import tcp
from .service import Mmds

DEFAULT_MAC = "06:01:23:45:67:01"
DEFAULT_IPV4 = "169.254.169.254"
DEFAULT_PORT = 80
LINK_LOCAL = ipaddress.ip_network("169.254.0.0/16")
IP_TTL = 1
ETH_HLEN = 14
_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_ETH_IP, _ETH_ARP = b"\x08\x00", b"\x08\x06"
#: ARP replies waiting for a guest RX buffer, one per sender MAC. Firecracker keeps only the
#: latest request, but then a guest's own request is lost whenever any other comes after
#: it in the same TX pass (a flood of them from other senders); a TX pass handles up to 256
#: chains, so this many senders cover most of one, the oldest giving way.
ARP_PENDING_MAX = 64


def parse_mac(mac: str | bytes) -> bytes:
    if isinstance(mac, bytes):
        if len(mac) != 6:
            raise ValueError(f"MAC must be 6 bytes, got {len(mac)}")
        return mac
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"bad MAC address {mac!r}")
    return raw


def check_ipv4_address(ip: str) -> str:
    """Firecracker's rule for `mmds-config.ipv4_address`: a link-local IPv4 address."""
    try:
        addr = ipaddress.IPv4Address(ip)
    except (ipaddress.AddressValueError, ValueError):
        raise ValueError(f"MMDS ipv4_address {ip!r} is not an IPv4 address") from None
    if addr not in LINK_LOCAL:
        raise ValueError(f"MMDS ipv4_address {ip} is outside 169.254.0.0/16")
    return str(addr)


class MmdsStack:
    def __init__(self, mmds: Mmds, *, mac: str | bytes = DEFAULT_MAC, ip: str = DEFAULT_IPV4,
                 port: int = DEFAULT_PORT, max_connections: int = tcp.MAX_CONNECTIONS,
                 max_pending_resets: int = tcp.MAX_PENDING_RESETS,
                 clock: Callable[[], float] = time.monotonic, verify_checksums: bool = False,
                 isn: Callable[[], int] | None = None):
        self.mmds, self.clock = mmds, clock
        self.mac = parse_mac(mac)
        self.ip = check_ipv4_address(ip)
        self.ip_bytes = socket.inet_aton(self.ip)
        self.verify_checksums = verify_checksums
        self.tcp = tcp.TcpHandler(port, mmds.respond, max_connections=max_connections,
                                  max_pending_resets=max_pending_resets, isn=isn)
        self.arp_replies: dict[bytes, bytes] = {}            # requester mac -> its ip
        self.stats: collections.Counter[str] = collections.Counter()

    # -- guest TX ----------------------------------------------------------------------
    def detour(self, frame: bytes | bytearray | memoryview) -> bool:
        """Is this guest frame ARP for, or IPv4 to, the MMDS address?"""
        etype = frame[12:14]
        if etype == _ETH_IP:
            return len(frame) >= ETH_HLEN + 20 and frame[30:34] == self.ip_bytes
        if etype == _ETH_ARP:
            return len(frame) >= ETH_HLEN + 28 and frame[38:42] == self.ip_bytes
        return False

    def take(self, frame, now: float | None = None) -> bool:
        if not self.detour(frame):
            return False
        self.handle(frame, now)
        return True

    def handle(self, frame, now: float | None = None) -> None:
        """Consume a frame `detour` accepted (anything malformed is dropped and counted)."""
        frame = bytes(frame)
        now = self.clock() if now is None else now
        self.stats["rx_frames"] += 1
        etype = frame[12:14]
        if etype == _ETH_ARP:
            self._arp(frame)
        elif etype == _ETH_IP:
            self._ipv4(frame, now)
        else:
            self.stats["rx_dropped"] += 1

    def _arp(self, frame: bytes) -> None:
        htype, ptype, hlen, plen, op, sha, spa, _, tpa = _ARP.unpack_from(frame, ETH_HLEN)
        if (htype, ptype, hlen, plen, op) != (1, 0x0800, 6, 4, 1) or tpa != self.ip_bytes:
            self.stats["rx_bad_arp"] += 1
            return
        replies = self.arp_replies
        if sha not in replies and len(replies) >= ARP_PENDING_MAX:
            del replies[next(iter(replies))]              # the oldest sender gives way
            self.stats["arp_dropped"] += 1
        replies[sha] = spa                                # a sender's latest request

    def _ipv4(self, frame: bytes, now: float) -> None:
        vihl, _, total, _, frag, _, proto, _, src, dst = _IPV4.unpack_from(frame, ETH_HLEN)
        ihl = (vihl & 0xF) * 4
        if vihl >> 4 != 4 or ihl < 20 or total < ihl or ETH_HLEN + total > len(frame):
            self.stats["rx_bad_ip"] += 1
            return
        if self.verify_checksums and tcp.checksum(frame[ETH_HLEN:ETH_HLEN + ihl]) != 0:
            self.stats["rx_bad_checksum"] += 1
            return
        if frag & 0x3FFF:                                 # MF or an offset: no reassembly
            self.stats["rx_fragment"] += 1
            return
        if proto != socket.IPPROTO_TCP:
            self.stats["rx_not_tcp"] += 1                 # e.g. ping: consumed, unanswered
            return
        data = memoryview(frame)[ETH_HLEN + ihl:ETH_HLEN + total]
        if self.verify_checksums and tcp.tcp_checksum(src, dst, data) != 0:
            self.stats["rx_bad_checksum"] += 1
            return
        seg = tcp.parse_segment(data)
        if seg is None:
            self.stats["rx_bad_tcp"] += 1
            return
        self.tcp.receive(seg, src, frame[6:12], now)

    # -- guest RX ----------------------------------------------------------------------
    def has_pending(self, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        return bool(self.arp_replies) or self.tcp.has_pending(now)

    def next_deadline(self) -> float | None:
        return self.tcp.deadline()

    def pending_rx(self, now: float | None = None) -> bytes | None:
        """The next frame for the guest, or None; call until None while the guest has room."""
        if self.arp_replies:
            mac = next(iter(self.arp_replies))
            ip = self.arp_replies.pop(mac)
            self.stats["tx_arp"] += 1
            body = _ARP.pack(1, 0x0800, 6, 4, 2, self.mac, self.ip_bytes, mac, ip)
            return _ETH.pack(mac, self.mac, 0x0806) + body
        now = self.clock() if now is None else now
        out = self.tcp.next_segment(now)
        if out is None:
            return None
        local, ip, port, mac, seq, ack, flags, payload, mss = out
        entry = self.tcp.connections.get((ip, port))
        if flags & tcp.RST:
            window = 0
        elif entry is not None:
            window = entry[0].local_window()
        else:                       # a SYN cookie's SYN-ACK: no state, so an empty buffer
            window = tcp.RCV_BUF_MAX_SIZE
        seg = tcp.build_segment(self.ip_bytes, ip, local, port, seq, ack, flags, window,
                                payload, mss)
        hdr = _IPV4.pack(0x45, 0, 20 + len(seg), 0, 0x4000, IP_TTL, socket.IPPROTO_TCP, 0,
                         self.ip_bytes, ip)
        hdr = hdr[:10] + struct.pack("!H", tcp.checksum(hdr)) + hdr[12:]
        self.stats["tx_tcp"] += 1
        return _ETH.pack(mac, self.mac, 0x0800) + hdr + seg
