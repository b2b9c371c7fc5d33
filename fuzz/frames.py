"""Guest frames for the net and MMDS targets: mostly-plausible Ethernet/ARP/IPv4/TCP/HTTP
built from fuzz bytes (random bytes alone would almost never reach the TCP state machine).

A `Conversation` is the guest's TCP client: it remembers what the server said (from the
frames the stack hands back) so the input can choose to ACK it right, or to lie.
"""

from __future__ import annotations

import socket
import struct

from nodesvc.mmds import tcp

MMDS_IP = socket.inet_aton("169.254.169.254")
GUEST_IP = socket.inet_aton("169.254.0.2")
MMDS_MAC = bytes.fromhex("060123456701")
GUEST_MAC = bytes.fromhex("020000000002")
ISN = 0x1000_0000            # the stacks' initial sequence number here (a fixed one:
                             # the input must be able to ACK the SYN-ACK)
_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")

PATHS = (b"/", b"/latest", b"/latest/", b"/latest/meta-data", b"/latest/meta-data/",
         b"/latest/meta-data/instance-id", b"/latest/meta-data/tags/n/0", b"/latest/api/token",
         b"//latest//meta-data", b"/latest/meta-data/big", b"/nope", b"http://x/latest", b"")
HEADERS = (b"Accept: application/json", b"Accept: text/plain", b"Accept:",
           b"X-metadata-token: ", b"X-metadata-token-ttl-seconds: 60",
           b"X-aws-ec2-metadata-token-ttl-seconds: 21600", b"X-Forwarded-For: 1.2.3.4",
           b"Content-Length: 3", b"Content-Length: x", b"Transfer-Encoding: chunked",
           b"Accept-Encoding: identity;q=0", b"Host: 169.254.169.254", b"Expect: 100", b"bad")


def http_request(inp, token: bytes = b"") -> bytes:
    if inp.u8() > 220:
        return inp.blob(3000)
    method = inp.pick((b"GET", b"GET", b"PUT", b"PATCH", b"DELETE", b"POST", b"get"))
    version = inp.pick((b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1"))
    lines = [b" ".join((method, inp.pick(PATHS) + inp.blob(4), version))]
    for _ in range(inp.int_in(0, 4)):
        h = inp.pick(HEADERS)
        lines.append(h + token if h.startswith(b"X-metadata-token:") else h)
    end = inp.pick((b"\r\n\r\n", b"\n\n", b"\r\n", b"\n\r\n"))
    return b"\r\n".join(lines) + end + (inp.blob(8) if inp.u8() > 240 else b"")


class Conversation:
    """One guest TCP client (port chosen by the input) of the MMDS server."""

    def __init__(self, sport: int):
        self.sport = sport
        self.seq = 0x100            # client's next sequence number
        self.server_next = ISN + 1  # what the server will send next (its SYN counted)

    def heard(self, seg) -> None:
        """A segment from the server: track how far it got."""
        if seg.dport != self.sport:
            return
        nxt = (seg.seq + len(seg.payload) + (1 if seg.flags & (tcp.SYN | tcp.FIN) else 0))
        if tcp.seq_lt(self.server_next, nxt & 0xFFFFFFFF):
            self.server_next = nxt & 0xFFFFFFFF

    def segment(self, inp) -> bytes:
        """The next TCP segment: SYN, data, FIN, RST or garbage, ACKing right or not."""
        k = inp.u8()
        flags = inp.pick((tcp.SYN, tcp.ACK, tcp.ACK | tcp.PSH, tcp.ACK | tcp.FIN, tcp.RST,
                          tcp.ACK | tcp.RST)) if k < 240 else inp.u8()
        payload = b""
        if flags & tcp.ACK and not flags & tcp.RST and inp.flag():
            payload = http_request(inp)
        seq = self.seq if inp.u8() < 220 else inp.u32()
        ack = self.server_next if inp.u8() < 220 else (self.server_next + inp.int_in(-3, 3)
                                                       if inp.flag() else inp.u32())
        if flags & tcp.SYN:
            self.seq, seq = (seq + 1) & 0xFFFFFFFF, seq
        self.seq = (self.seq + len(payload) + (1 if flags & tcp.FIN else 0)) & 0xFFFFFFFF
        window = inp.pick((2500, 65535, 0, 1, 536)) if inp.u8() < 240 else inp.u16()
        mss = inp.pick((None, 536, 1460, 1, 0, 65535)) if flags & tcp.SYN else None
        dport = 80 if inp.u8() < 240 else inp.u16()
        return tcp.build_segment(GUEST_IP, MMDS_IP, self.sport, dport, seq, ack,
                                 flags & 0xFF, window, payload, mss)


def ipv4(payload: bytes, inp, proto: int = socket.IPPROTO_TCP) -> bytes:
    frag = 0x4000 if inp.u8() < 240 else inp.u16()
    hdr = _IPV4.pack(0x45 if inp.u8() < 245 else inp.u8(), 0,
                     20 + len(payload) if inp.u8() < 245 else inp.u16(), 0, frag, 64, proto,
                     0, GUEST_IP, MMDS_IP if inp.u8() < 245 else inp.bytes(4).ljust(4, b"\0"))
    hdr = hdr[:10] + struct.pack("!H", tcp.checksum(hdr)) + hdr[12:]
    return _ETH.pack(MMDS_MAC, GUEST_MAC, 0x0800) + hdr + payload


def arp_request(inp) -> bytes:
    op = 1 if inp.u8() < 240 else inp.u16()
    body = _ARP.pack(1, 0x0800, 6, 4, op, GUEST_MAC, GUEST_IP, bytes(6),
                     MMDS_IP if inp.u8() < 240 else inp.bytes(4).ljust(4, b"\0"))
    return _ETH.pack(b"\xff" * 6, GUEST_MAC, 0x0806) + body


def guest_frame(inp, convs: list[Conversation]) -> bytes:
    """One Ethernet frame from the guest, mostly for MMDS."""
    k = inp.u8()
    if k < 30:
        return arp_request(inp)
    if k < 200:
        return ipv4(inp.pick(convs).segment(inp), inp)
    if k < 215:
        return ipv4(inp.blob(64), inp, proto=inp.pick((1, 17, 6)))
    frame = inp.blob(1600)
    if inp.flag() and len(frame) >= 42:       # random, but aimed at MMDS
        frame = frame[:12] + b"\x08\x00" + frame[14:30] + MMDS_IP + frame[34:]
    return frame
