"""MMDS Ethernet/ARP/IPv4/TCP stack driven by hand-built guest frames and an explicit clock."""

import socket
import struct

import pytest

from nodesvc.mmds import Mmds, MmdsStack, tcp
from nodesvc.mmds.stack import ARP_PENDING_MAX
from nodesvc.mmds.tcp import ACK, FIN, PSH, RST, SYN, checksum, tcp_checksum
from nodesvc.net.frames import ETH_P_ARP, ETH_P_IP, ethernet, ipv4_udp

GUEST_MAC = bytes.fromhex("020000000002")
MMDS_MAC = bytes.fromhex("060123456701")
GUEST_IP, MMDS_IP = "192.0.2.2", "169.254.169.254"
ISN = 0xFFFFFF00            # close to wrap-around on purpose


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def make(doc=None, **kw):
    clock = Clock()
    mmds = Mmds(clock=clock)
    mmds.put(doc if doc is not None else {"latest": {"meta-data": {"ami-id": "ami-123"}}})
    stack = MmdsStack(mmds, clock=clock, verify_checksums=True, isn=lambda: ISN, **kw)
    return stack, clock


def ip_packet(src, dst, proto, payload, frag=0x4000, bad_csum=False):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, frag, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    csum = checksum(hdr) ^ (0xFFFF if bad_csum else 0)
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + payload


def tcp_frame(sport, seq, ack, flags, payload=b"", window=64240, mss=None, dport=80,
              dst=MMDS_IP, src=GUEST_IP):
    seg = tcp.build_segment(socket.inet_aton(src), socket.inet_aton(dst), sport, dport, seq,
                            ack, flags, window, payload, mss)
    return ethernet(MMDS_MAC, GUEST_MAC, ETH_P_IP, ip_packet(src, dst, 6, seg))


def arp_request(tpa=MMDS_IP, op=1, spa=GUEST_IP):
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, GUEST_MAC, socket.inet_aton(spa),
                       bytes(6), socket.inet_aton(tpa))
    return ethernet(b"\xff" * 6, GUEST_MAC, ETH_P_ARP, body)


def parse_out(frame):
    """Check the Ethernet/IPv4/TCP framing and checksums of a stack frame; return the segment."""
    assert frame[0:6] == GUEST_MAC and frame[6:12] == MMDS_MAC and frame[12:14] == b"\x08\x00"
    ip = frame[14:34]
    assert ip[0] == 0x45 and ip[8] == 1 and ip[9] == 6          # TTL 1, TCP
    assert checksum(ip) == 0
    assert ip[12:16] == socket.inet_aton(MMDS_IP) and ip[16:20] == socket.inet_aton(GUEST_IP)
    total = struct.unpack("!H", ip[2:4])[0]
    assert total == len(frame) - 14
    data = frame[34:]
    assert tcp_checksum(ip[12:16], ip[16:20], data) == 0
    return tcp.parse_segment(data)


def drain(stack, now=None):
    out = []
    for _ in range(1000):
        f = stack.pending_rx(now)
        if f is None:
            return out
        out.append(f)
    raise AssertionError("stack never ran dry")


def segs(stack, now=None):
    return [parse_out(f) for f in drain(stack, now)]


class Peer:
    """A scripted guest TCP endpoint on one port."""

    def __init__(self, stack, sport=40000, seq=1000, mss=None, window=64240):
        self.stack, self.sport, self.seq, self.window = stack, sport, seq, window
        self.mss = mss
        self.rcv = None
        self.data = b""

    def send(self, flags, payload=b"", seq=None, ack=None, window=None):
        f = tcp_frame(self.sport, self.seq if seq is None else seq,
                      (self.rcv or 0) if ack is None else ack, flags, payload,
                      self.window if window is None else window,
                      self.mss if flags & SYN else None)
        assert self.stack.detour(f)
        self.stack.handle(f)
        if seq is None:
            self.seq = (self.seq + len(payload) + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF

    def connect(self):
        self.send(SYN)
        (synack,) = segs(self.stack)
        assert synack.flags == SYN | ACK and synack.ack == self.seq and synack.seq == ISN
        assert synack.mss == tcp.MSS_ADVERTISED
        self.rcv = (synack.seq + 1) & 0xFFFFFFFF
        self.send(ACK)
        assert segs(self.stack) == []
        return synack

    def take(self, out):
        """Absorb in-order segments like a receiver (no ACKs sent)."""
        for s in out:
            if s.seq == self.rcv:
                self.data += s.payload
                self.rcv = (self.rcv + len(s.payload) + (1 if s.flags & FIN else 0)) & 0xFFFFFFFF
        return out


def response_body(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b" ")[1], body


# -- detour ----------------------------------------------------------------------------

def test_detour_picks_only_arp_for_and_ipv4_to_the_mmds_address():
    stack, _ = make()
    assert stack.detour(arp_request())
    assert not stack.detour(arp_request(tpa="192.0.2.1"))
    assert stack.detour(tcp_frame(1, 0, 0, SYN))
    assert stack.detour(ethernet(MMDS_MAC, GUEST_MAC, ETH_P_IP,
                                 ipv4_udp(GUEST_IP, MMDS_IP, 1, 2, b"x")))
    assert not stack.detour(tcp_frame(1, 0, 0, SYN, dst="192.0.2.1"))
    assert not stack.detour(ethernet(MMDS_MAC, GUEST_MAC, 0x86DD, bytes(60)))   # IPv6
    vlan = ethernet(MMDS_MAC, GUEST_MAC, 0x8100, b"\x00\x01\x08\x00" + tcp_frame(1, 0, 0, SYN)[14:])
    assert not stack.detour(vlan)
    for short in (b"", b"\x00" * 13, tcp_frame(1, 0, 0, SYN)[:33], arp_request()[:41]):
        assert not stack.detour(short)


def test_configurable_link_local_address_only():
    stack, _ = make(ip="169.254.1.2")
    assert stack.detour(tcp_frame(1, 0, 0, SYN, dst="169.254.1.2"))
    assert not stack.detour(tcp_frame(1, 0, 0, SYN))
    for bad in ("10.0.0.1", "169.255.0.1", "not-an-ip", "169.254.1"):
        with pytest.raises(ValueError):
            make(ip=bad)


# -- ARP -------------------------------------------------------------------------------

def test_arp_reply_latest_request_only_and_before_tcp():
    stack, _ = make()
    stack.handle(arp_request(spa="192.0.2.7"))
    stack.handle(tcp_frame(40000, 1, 0, SYN))
    stack.handle(arp_request(spa="192.0.2.2"))
    frames = drain(stack)
    assert len(frames) == 2
    arp = frames[0]
    assert arp[0:6] == GUEST_MAC and arp[6:12] == MMDS_MAC and arp[12:14] == b"\x08\x06"
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = struct.unpack("!HHBBH6s4s6s4s", arp[14:42])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 2)
    assert (sha, spa) == (MMDS_MAC, socket.inet_aton(MMDS_IP))
    assert (tha, tpa) == (GUEST_MAC, socket.inet_aton("192.0.2.2"))
    assert parse_out(frames[1]).flags == SYN | ACK


def test_arp_replies_one_per_sender_bounded_oldest_giving_way():
    stack, _ = make()
    macs = [bytes([2, 0, 0, 0, i >> 8, i & 0xFF]) for i in range(ARP_PENDING_MAX + 5)]
    for mac in macs:
        req = bytearray(arp_request())
        req[6:12] = req[22:28] = mac           # Ethernet source and ARP sender
        stack.handle(bytes(req))
    frames = drain(stack)
    assert [f[0:6] for f in frames] == macs[5:]
    assert stack.stats["arp_dropped"] == 5


def test_arp_that_is_not_a_request_is_consumed_silently():
    stack, _ = make()
    assert stack.take(arp_request(op=2))
    assert drain(stack) == [] and stack.stats["rx_bad_arp"] == 1


# -- TCP exchange ----------------------------------------------------------------------

def test_handshake_request_in_several_segments_response_and_close():
    stack, clock = make()
    p = Peer(stack, mss=1200)
    p.connect()
    request = b"GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
    for i in range(0, len(request), 10):               # ten bytes at a time
        p.send(ACK | PSH, request[i:i + 10])
        out = p.take(segs(stack))
        if i + 10 < len(request):
            assert [(s.flags, s.ack, s.payload) for s in out] == [(ACK, p.seq, b"")]
    assert len(out) == 1 and out[0].flags == ACK | PSH and out[0].ack == p.seq
    assert out[0].window == tcp.RCV_BUF_MAX_SIZE
    status, body = response_body(p.data)
    assert (status, body) == (b"200", b"ami-123")
    assert stack.next_deadline() == pytest.approx(clock.t + tcp.RTO_SECONDS)
    p.send(ACK)                                        # response acked: no timer
    assert stack.next_deadline() is None and segs(stack) == []
    p.send(FIN | ACK)
    (fin,) = p.take(segs(stack))
    assert fin.flags == FIN | ACK and fin.ack == p.seq
    assert len(stack.tcp.connections) == 1             # until our FIN is acked
    p.send(ACK)
    assert stack.tcp.connections == {} and segs(stack) == []


def test_keep_alive_and_pipelining():
    stack, _ = make()
    p = Peer(stack)
    p.connect()
    get = b"GET /latest/meta-data/ami-id HTTP/1.0\r\n\r\n"
    p.send(ACK | PSH, get + get)                       # two requests in one segment
    p.take(segs(stack))
    assert p.data.count(b"HTTP/1.0 200") == 1          # one response pending at a time
    p.send(ACK)
    p.take(segs(stack))
    assert p.data.count(b"HTTP/1.0 200") == 2
    p.send(ACK)
    p.send(ACK | PSH, get)                             # and the connection stays open
    p.take(segs(stack))
    assert p.data.count(b"ami-123") == 3


def test_large_response_respects_mss_and_peer_window():
    doc = {"big": "x" * 20000}
    stack, _ = make(doc)
    p = Peer(stack, mss=1000, window=3000)
    p.connect()
    p.send(ACK | PSH, b"GET /big HTTP/1.1\r\n\r\n")
    out = p.take(segs(stack))
    assert [len(s.payload) for s in out] == [1000, 1000, 1000]   # window full
    for _ in range(100):
        p.send(ACK)
        out = p.take(segs(stack))
        assert all(len(s.payload) <= 1000 for s in out)
        if not out:
            break
    status, body = response_body(p.data)
    assert status == b"200" and body == b"x" * 20000


def test_zero_window_stalls_and_window_update_resumes():
    stack, _ = make({"big": "y" * 5000})
    p = Peer(stack, mss=1460, window=1000)
    p.connect()
    p.send(ACK | PSH, b"GET /big HTTP/1.1\r\n\r\n")
    assert [len(s.payload) for s in p.take(segs(stack))] == [1000]
    p.send(ACK, window=0)
    assert segs(stack) == []
    p.send(ACK, window=4000)                            # same ACK, window opens
    assert sum(len(s.payload) for s in p.take(segs(stack))) == 4000


def test_client_rst_drops_the_connection_out_of_window_rst_is_ignored():
    stack, _ = make()
    p = Peer(stack)
    p.connect()
    p.send(RST, seq=p.seq + 100000)
    assert len(stack.tcp.connections) == 1
    p.send(RST)
    assert stack.tcp.connections == {} and segs(stack) == []


def test_unknown_segments_get_rst_but_rst_gets_nothing():
    stack, _ = make()
    stack.handle(tcp_frame(40001, 555, 777, ACK))
    stack.handle(tcp_frame(40002, 555, 0, PSH, b"hello"))
    stack.handle(tcp_frame(40003, 555, 0, RST))
    stack.handle(tcp_frame(40004, 9, 0, SYN, dport=81))       # closed port
    a, b, c = segs(stack)
    assert (a.dport, a.flags, a.seq) == (40001, RST, 777)
    assert (b.dport, b.flags, b.ack) == (40002, RST | ACK, 560)
    assert (c.dport, c.sport, c.flags, c.ack) == (40004, 81, RST | ACK, 10)


def test_rst_queue_is_bounded():
    stack, _ = make()
    for i in range(150):
        stack.handle(tcp_frame(30000 + i, 1, 2, ACK))
    assert len(drain(stack)) == tcp.MAX_PENDING_RESETS


def test_syn_on_established_connection_resets_it():
    stack, _ = make()
    p = Peer(stack)
    p.connect()
    p.send(SYN, seq=5)
    (rst,) = segs(stack)
    assert rst.flags & RST and stack.tcp.connections == {}


def test_lost_synack_is_resent_for_a_retransmitted_syn_and_on_rto():
    stack, clock = make()
    stack.handle(tcp_frame(40000, 1000, 0, SYN))
    assert segs(stack)[0].flags == SYN | ACK
    stack.handle(tcp_frame(40000, 1000, 0, SYN))      # peer retries: same SYN
    assert [s.flags for s in segs(stack)] == [SYN | ACK]
    assert segs(stack) == []
    clock.t += tcp.RTO_SECONDS
    assert [s.flags for s in segs(stack)] == [SYN | ACK]
    stack.handle(tcp_frame(40000, 1001, 12345, ACK))  # wrong ACK for our SYN-ACK
    assert [s.flags for s in segs(stack)] == [RST]
    assert stack.tcp.connections == {}


def test_retransmission_timer_and_reset_after_15_rtos():
    stack, clock = make()
    p = Peer(stack)
    p.connect()
    p.send(ACK | PSH, b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n")
    (first,) = segs(stack)
    deadline = stack.next_deadline()
    assert deadline == pytest.approx(clock.t + 0.3)
    assert segs(stack, now=deadline - 0.01) == []
    for n in range(1, tcp.RTO_COUNT_MAX):
        clock.t = stack.next_deadline()
        (again,) = segs(stack)
        assert (again.seq, again.payload) == (first.seq, first.payload), n
    clock.t = stack.next_deadline()
    (rst,) = segs(stack)
    assert rst.flags & RST and stack.tcp.connections == {} and stack.next_deadline() is None


def test_progress_resets_the_rto_count_and_dup_ack_retransmits_at_once():
    stack, clock = make({"big": "z" * 3000})
    p = Peer(stack, mss=1000)
    p.connect()
    p.send(ACK | PSH, b"GET /big HTTP/1.1\r\n\r\n")
    out = segs(stack)
    assert len(out) == 4
    p.rcv = out[0].seq
    p.take(out[:1])                                   # segment 2 "lost"
    p.send(ACK)                                       # acks segment 1
    p.send(ACK)                                       # duplicate ACK
    (re,) = segs(stack)
    assert re.seq == out[1].seq and re.payload == out[1].payload


def test_connection_cap_answers_a_cookie_then_evicts_idle():
    stack, clock = make()
    for i in range(tcp.MAX_CONNECTIONS):
        stack.handle(tcp_frame(20000 + i, 1, 0, SYN))
    assert len(segs(stack)) == tcp.MAX_CONNECTIONS
    stack.handle(tcp_frame(29999, 1, 0, SYN))
    (cookie,) = segs(stack)                    # a SYN cookie, and no state for it
    assert cookie.flags == SYN | ACK and cookie.dport == 29999 and cookie.window > 0
    assert len(stack.tcp.connections) == tcp.MAX_CONNECTIONS
    clock.t += tcp.EVICTION_IDLE_SECONDS + 1
    stack.handle(tcp_frame(29999, 1, 0, SYN))
    out = segs(stack)
    assert [s.flags & (RST | SYN) for s in out].count(RST) == 1      # the evicted one
    assert any(s.flags == SYN | ACK and s.dport == 29999 for s in out)
    assert len(stack.tcp.connections) == tcp.MAX_CONNECTIONS


def test_syn_cookie_completes_over_half_open_connections_and_is_checked():
    stack, clock = make()
    for i in range(tcp.MAX_CONNECTIONS):           # half-open: their SYN-ACKs go nowhere
        stack.handle(tcp_frame(20000 + i, 7, 0, SYN))
    segs(stack)
    p = Peer(stack, sport=29999, mss=1400)
    p.send(SYN)
    (synack,) = segs(stack)
    p.rcv = (synack.seq + 1) & 0xFFFFFFFF
    p.send(ACK, ack=(p.rcv + 4) & 0xFFFFFFFF)      # a wrong cookie: a RST, no state
    (rst,) = segs(stack)
    assert rst.flags == RST and (socket.inet_aton(GUEST_IP), 29999) not in stack.tcp.connections
    p.send(ACK | PSH, b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n")
    out = segs(stack)
    assert [(s.dport, s.flags) for s in out[:1]] == [(20000, RST | ACK)]  # oldest handshake
    p.take(out[1:])
    assert response_body(p.data) == (b"200", b"ami-123")
    assert max(len(s.payload) for s in out) <= 1300                       # the cookie's MSS class
    assert stack.tcp.stats["cookie_accepted"] == 1
    # a cookie is good for one more time slot, not two
    q = Peer(stack, sport=29998)
    q.send(SYN)
    (late,) = segs(stack)
    clock.t += 2 * tcp.SYNCOOKIE_SLOT_SECONDS
    q.send(ACK, ack=(late.seq + 1) & 0xFFFFFFFF)
    assert [s.flags for s in segs(stack) if s.dport == 29998] == [RST]   # (and SYN-ACK RTOs)


def test_connection_cap_reclaims_finished_exchanges_first():
    stack, _ = make()
    peers = [Peer(stack, sport=20000 + i) for i in range(tcp.MAX_CONNECTIONS)]
    for p in peers:
        p.connect()
    done = peers[3]
    done.send(ACK | PSH, b"GET /latest HTTP/1.1\r\n\r\n")
    done.take(segs(stack))
    done.send(ACK)
    done.send(FIN | ACK)          # the client closed; our FIN is not out yet
    stack.handle(tcp_frame(29999, 1, 0, SYN))
    out = segs(stack)
    assert [(s.dport, s.flags) for s in out] == [(20003, RST | ACK), (29999, SYN | ACK)]
    assert (socket.inet_aton(GUEST_IP), 20003) not in stack.tcp.connections


def test_oversized_request_gets_413_and_fin():
    stack, _ = make()
    p = Peer(stack)
    p.connect()
    head = b"GET / HTTP/1.1\r\nX-Pad: "
    p.send(ACK, head + b"p" * (1400 - len(head)))
    p.take(segs(stack))
    p.send(ACK, b"p" * 1400)                            # 2800 > 2500: only 1100 fit
    out = p.take(segs(stack))
    assert out[-1].flags & FIN
    status, body = response_body(p.data)
    assert status == b"413" and b"limit of 2500" in body
    p.send(ACK, b"more data is discarded")
    p.send(FIN | ACK)
    p.take(segs(stack))
    p.send(ACK)
    assert stack.tcp.connections == {}


def test_non_tcp_fragments_and_bad_checksums_are_dropped():
    stack, _ = make()
    udp = ethernet(MMDS_MAC, GUEST_MAC, ETH_P_IP, ipv4_udp(GUEST_IP, MMDS_IP, 1, 2, b"x"))
    syn = tcp_frame(1, 0, 0, SYN)
    frag = syn[:20] + struct.pack("!H", 0x2000) + syn[22:]               # MF set
    bad_ip = syn[:24] + bytes([syn[24] ^ 0xFF]) + syn[25:]
    bad_tcp = syn[:-1] + bytes([syn[-1] ^ 0xFF])
    for f in (udp, frag, bad_ip, bad_tcp, syn[:40]):
        assert stack.take(f)
    assert drain(stack) == [] and stack.tcp.connections == {}
    assert stack.stats["rx_not_tcp"] == 1 and stack.stats["rx_bad_checksum"] >= 2


def test_sequence_numbers_wrap():
    stack, _ = make({"big": "w" * 1000})
    p = Peer(stack, seq=0xFFFFFFF0)
    p.connect()                                         # our ISN is 0xFFFFFF00 too
    p.send(ACK | PSH, b"GET /big HTTP/1.1\r\n\r\n")
    for _ in range(10):
        if not p.take(segs(stack)):
            break
        p.send(ACK)
    assert response_body(p.data) == (b"200", b"w" * 1000)


def test_default_isns_differ_between_connections():
    from nodesvc.mmds.tcp import _isn_generator
    gen = _isn_generator()
    isns = {gen() for _ in range(100)}
    assert len(isns) == 100 and all(0 <= i < 2**32 for i in isns)
