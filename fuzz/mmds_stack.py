"""The MMDS network stack (nodesvc/mmds): guest Ethernet frames in — ARP, IPv4 with any
header, TCP from up to three clients that follow the server's sequence numbers or lie,
HTTP requests good and bad inside — with the clock moved by the input, and everything
the stack answers read back out (and fed to the clients).

Properties: no exception; `detour` and `take` agree; the stack's state stays within its
limits (connections, queued RSTs, receive buffers); every frame it sends is a well-formed
ARP reply or an IPv4/TCP segment from the MMDS address with correct checksums and at
most one MSS of payload; draining its output ends (bounded work per input), and
when it does, `has_pending()` agrees (else the net device's MMDS timer spins).
"""

from __future__ import annotations

import struct

from fuzz import common

with common.instrumented():
    from fuzz import devices, frames
    from fuzz.harness import Finding, Input
    from nodesvc.mmds import MmdsStack, tcp

CLOCK = devices.Clock()
SERVICES = (devices.mmds(CLOCK), devices.mmds(CLOCK, version="V2"))
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
DRAIN_LIMIT = 2000       # frames one drain may produce before it counts as a hang


def check_frame(out: bytes, convs) -> None:
    if out[6:12] != frames.MMDS_MAC:
        raise Finding("frame not from the MMDS MAC")
    etype = out[12:14]
    if etype == b"\x08\x06":
        if len(out) != 42 or out[28:32] != frames.MMDS_IP:
            raise Finding(f"bad ARP reply {out.hex()}")
        return
    if etype != b"\x08\x00":
        raise Finding(f"frame with ethertype {etype.hex()}")
    ip = out[14:34]
    _, _, total, _, _, ttl, proto, _, src, _ = _IPV4.unpack(ip)
    if src != frames.MMDS_IP or proto != 6 or total != len(out) - 14 or tcp.checksum(ip):
        raise Finding(f"bad IPv4 header {ip.hex()}")
    seg_bytes = out[34:]
    if tcp.tcp_checksum(src, _IPV4.unpack(ip)[9], seg_bytes) != 0:
        raise Finding("bad TCP checksum")
    seg = tcp.parse_segment(seg_bytes)
    if seg is None or len(seg.payload) > tcp.MSS_ADVERTISED:
        raise Finding("malformed or oversized TCP segment")
    for c in convs:
        c.heard(seg)


def drain(stack: MmdsStack, convs) -> None:
    for _ in range(DRAIN_LIMIT):
        out = stack.pending_rx()
        if out is None:
            if stack.has_pending():     # the device would re-arm its timer at once forever
                raise Finding("has_pending() is true but pending_rx() has nothing")
            return
        check_frame(out, convs)
    raise Finding(f"the stack produced more than {DRAIN_LIMIT} frames in one drain")


def check_bounds(stack: MmdsStack) -> None:
    h = stack.tcp
    if len(h.connections) > h.max_connections or len(h.resets) > h.max_pending_resets:
        raise Finding(f"{len(h.connections)} connections, {len(h.resets)} resets queued")
    for conn, _ in h.connections.values():
        if len(conn.rbuf) > tcp.RCV_BUF_MAX_SIZE:
            raise Finding(f"receive buffer of {len(conn.rbuf)} bytes")


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    limit = inp.pick((tcp.MAX_CONNECTIONS, 1, 2))
    stack = MmdsStack(inp.pick(SERVICES), clock=CLOCK, isn=lambda: frames.ISN,
                      max_connections=limit, verify_checksums=inp.flag())
    convs = [frames.Conversation(40000 + i) for i in range(3)]
    for _ in range(inp.int_in(1, 40)):
        op = inp.u8()
        if op < 190:
            frame = frames.guest_frame(inp, convs)
            if stack.detour(frame) != stack.take(frame):
                raise Finding("detour and take disagree")
        elif op < 215:
            CLOCK.now += inp.pick((0.001, 0.1, 0.31, 1.0, 10.5, 100.0))
        elif op < 225:
            stack.next_deadline()
            stack.has_pending()
        else:
            drain(stack, convs)
        check_bounds(stack)
    drain(stack, convs)


if __name__ == "__main__":
    common.main(test_one_input)
