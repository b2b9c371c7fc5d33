"""Build and parse the few frames tests and tools need: Ethernet, ARP, IPv4/UDP.

Enough to play a guest on the wire (with static neighbour entries on the host
side) without a guest kernel. Not a packet library: no options, no fragments.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

ETH_P_IP, ETH_P_ARP = 0x0800, 0x0806
ETH_HLEN = 14
BROADCAST = b"\xff" * 6
_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")


def mac_bytes(mac: str | bytes) -> bytes:
    return mac if isinstance(mac, bytes) else bytes.fromhex(mac.replace(":", ""))


def ip_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(dst, src, ethertype: int, payload: bytes) -> bytes:
    return _ETH.pack(mac_bytes(dst), mac_bytes(src), ethertype) + payload


def ipv4_udp(src_ip: str, dst_ip: str, sport: int, dport: int, payload: bytes,
             ttl: int = 64, ident: int = 0) -> bytes:
    """An IPv4 packet carrying one UDP datagram (UDP checksum 0 = none, legal on IPv4)."""
    udp = _UDP.pack(sport, dport, 8 + len(payload), 0) + payload
    hdr = _IPV4.pack(0x45, 0, 20 + len(udp), ident, 0x4000, ttl, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    hdr = hdr[:10] + struct.pack("!H", ip_checksum(hdr)) + hdr[12:]
    return hdr + udp


def udp_frame(src_mac, dst_mac, src_ip: str, dst_ip: str, sport: int, dport: int,
              payload: bytes) -> bytes:
    return ethernet(dst_mac, src_mac, ETH_P_IP, ipv4_udp(src_ip, dst_ip, sport, dport, payload))


def arp_reply(src_mac, src_ip: str, dst_mac, dst_ip: str) -> bytes:
    body = _ARP.pack(1, ETH_P_IP, 6, 4, 2, mac_bytes(src_mac), socket.inet_aton(src_ip),
                     mac_bytes(dst_mac), socket.inet_aton(dst_ip))
    return ethernet(dst_mac, src_mac, ETH_P_ARP, body)


@dataclass
class Udp:
    src_mac: bytes
    dst_mac: bytes
    src_ip: str
    dst_ip: str
    sport: int
    dport: int
    payload: bytes


def parse_udp(frame: bytes) -> Udp | None:
    """The UDP datagram in an Ethernet/IPv4 frame, or None for anything else."""
    if len(frame) < ETH_HLEN + 28:
        return None
    dst, src, ethertype = _ETH.unpack_from(frame)
    if ethertype != ETH_P_IP:
        return None
    vihl, _, total, _, _, _, proto, _, sip, dip = _IPV4.unpack_from(frame, ETH_HLEN)
    ihl = (vihl & 0xF) * 4
    if vihl >> 4 != 4 or proto != socket.IPPROTO_UDP:
        return None
    off = ETH_HLEN + ihl
    sport, dport, length, _ = _UDP.unpack_from(frame, off)
    return Udp(src, dst, socket.inet_ntoa(sip), socket.inet_ntoa(dip), sport, dport,
               bytes(frame[off + 8:off + length]))
