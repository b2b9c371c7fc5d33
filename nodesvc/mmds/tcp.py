"""The TCP half of MMDS: passive open only, one HTTP exchange at a time per connection.

Modelled on Firecracker's dumbo (`dumbo/tcp/{connection,endpoint,handler}.rs`),
with its limits: 30 connections, 100 queued RSTs, a 2500-byte receive buffer
(also the window and the largest request), MSS option only (default 536), no
congestion control, no window scaling, no SACK, no timestamps. Retransmission
happens on the first duplicate ACK or after an RTO of 300 ms; 15 RTOs without
progress reset the connection. At the connection limit a SYN evicts a
connection idle for more than 10 s, or is answered with a SYN cookie.

Nothing here owns time or threads: every entry point takes `now` (monotonic
seconds) and `deadline()` says when the owner should call `next_segment` again
even if no frame arrives. Segments are produced lazily, one per call, from the
connections' state, so the output needs no queue beyond the bounded RST queue.

Differences from dumbo, each on purpose: the server waits for the ACK of its
FIN (retransmitting it) instead of forgetting the connection once the FIN is
sent; a request too large for the buffer gets a 413 and a FIN instead of a bare
RST; a segment for another port gets a RST instead of silence; a SYN may carry
ECN flags; at the connection limit a SYN gets a SYN cookie (RFC 4987 §3.6) instead of
a RST, so a flood of SYNs that never complete (spoofed sources) cannot lock out a peer
that does: only a returning ACK with a valid cookie makes state, evicting the oldest
connection still in its handshake if it must.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import struct
import sys
from dataclasses import dataclass
from typing import Callable

from . import http

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
CONTROL = FIN | SYN | RST | ACK
MSS_DEFAULT = 536                 # RFC 879 default when the SYN has no MSS option
MSS_ADVERTISED = 1460             # what we take in: a 1500-byte Ethernet MTU
MSS_FLOOR = 64                    # a tiny peer MSS would cost a frame per few bytes
RCV_BUF_MAX_SIZE = 2500
RTO_SECONDS = 0.3                 # dumbo: 1.2e9 TSC cycles
RTO_COUNT_MAX = 15
EVICTION_IDLE_SECONDS = 10.0      # dumbo: 40e9 TSC cycles
MAX_CONNECTIONS = 30
MAX_PENDING_RESETS = 100
SYNCOOKIE_MSS = (536, 1300, 1440, 1460)   # Linux's table: 2 bits of the cookie
SYNCOOKIE_SLOT_SECONDS = 8.0              # a cookie is good for 8 to 16 s
_HDR = struct.Struct("!HHIIBBHHH")
_PSEUDO = struct.Struct("!4s4sBBH")
_MASK = 0xFFFFFFFF


def seq_lt(a: int, b: int) -> bool:
    """a comes before b in sequence space (RFC 793 modular comparison)."""
    return a != b and ((b - a) & _MASK) < 0x80000000


def seq_le(a: int, b: int) -> bool:
    return a == b or seq_lt(a, b)


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The Internet checksum (RFC 1071). Summing native-endian words and byte-swapping
    the folded result gives the network-order sum, at C speed."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    total = sum(memoryview(data).cast("H")) + initial
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    if sys.byteorder == "little":
        total = ((total & 0xFF) << 8) | (total >> 8)
    return ~total & 0xFFFF


def tcp_checksum(src_ip: bytes, dst_ip: bytes, segment: bytes | memoryview) -> int:
    return checksum(_PSEUDO.pack(src_ip, dst_ip, 0, 6, len(segment)) + bytes(segment))


@dataclass(slots=True)
class Segment:
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    mss: int | None
    payload: bytes

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies (SYN and FIN count one each)."""
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)


def parse_segment(data: bytes | memoryview) -> Segment | None:
    """A TCP segment, or None when the header itself is malformed."""
    if len(data) < 20:
        return None
    sport, dport, seq, ack, off, flags, window, _, _ = _HDR.unpack_from(data)
    hlen = (off >> 4) * 4
    if hlen < 20 or hlen > len(data):
        return None
    mss, i = None, 20
    while i < hlen:                              # options: only MSS matters
        kind = data[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= hlen or data[i + 1] < 2 or i + data[i + 1] > hlen:
            break                                # malformed options: ignore the rest
        if kind == 2 and data[i + 1] == 4:
            mss = (data[i + 2] << 8) | data[i + 3]
        i += data[i + 1]
    return Segment(sport, dport, seq, ack, flags, window, mss, bytes(data[hlen:]))


def build_segment(src_ip: bytes, dst_ip: bytes, sport: int, dport: int, seq: int, ack: int,
                  flags: int, window: int, payload: bytes = b"", mss: int | None = None) -> bytes:
    opts = struct.pack("!BBH", 2, 4, mss) if mss is not None else b""
    hdr = _HDR.pack(sport, dport, seq & _MASK, ack & _MASK, (20 + len(opts)) // 4 << 4, flags,
                    window, 0, 0) + opts
    seg = hdr + payload
    csum = tcp_checksum(src_ip, dst_ip, seg)
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


def rst_for(seg: Segment) -> tuple[int, int, int]:
    """(seq, ack, flags) of the RST answering `seg` (RFC 793 §3.4 "reset generation")."""
    if seg.flags & ACK:
        return seg.ack, 0, RST
    return 0, (seg.seq + seg.seg_len) & _MASK, RST | ACK


class Connection:
    """One passive-open connection and its HTTP exchange."""

    def __init__(self, syn: Segment, isn: int, now: float,
                 respond: Callable[[bytes], http.Response]):
        self.respond = respond
        self.mss = max(MSS_FLOOR, min(syn.mss or MSS_DEFAULT, MSS_ADVERTISED))
        self.rcv_nxt = (syn.seq + 1) & _MASK
        self.iss = isn
        self.snd_una = isn                     # highest ACK received
        self.snd_nxt = (isn + 1) & _MASK       # first sequence number not sent (SYN counted)
        self.remote_edge = (self.snd_nxt + syn.window) & _MASK
        self.remote_window = syn.window
        self.established = False
        self.synack_pending = True
        self.rto_start = now
        self.rto_count = 0
        self.last_rx = now
        self.pending_ack = False
        self.dup_ack = False
        self.rbuf = bytearray()
        self.out = b""                         # the response being sent
        self.out_seq = self.snd_nxt            # sequence number of out[0]
        self.fin_received = False
        self.fin_seq: int | None = None        # our FIN's sequence number once we close
        self.fin_sent = self.fin_acked = False
        self.closing = False                   # we closed first: discard further data
        self.rst: tuple[int, int, int] | None = None
        self.done = False
        self.requests = 0

    # -- receiving ---------------------------------------------------------------------
    def local_window(self) -> int:
        return RCV_BUF_MAX_SIZE - len(self.rbuf)

    def reset(self) -> None:
        if self.rst is None:
            self.rst = (self.snd_nxt, self.rcv_nxt, RST | ACK)

    def receive(self, seg: Segment, now: float) -> None:
        if self.done or self.rst is not None:
            return
        self.last_rx = now
        flags = seg.flags
        if flags & RST:
            # RFC 793: acceptable if in the receive window (exact match for an empty window)
            win = max(self.local_window(), 1)
            if seq_le(self.rcv_nxt, seg.seq) and seq_lt(seg.seq, (self.rcv_nxt + win) & _MASK):
                self.done = True
            return
        if not self.established:
            if flags & SYN:
                if (seg.seq + 1) & _MASK == self.rcv_nxt and not flags & ACK:
                    self.synack_pending = True     # our SYN-ACK was lost: send it again
                    return
                self.rst = rst_for(seg)
                return
            if not flags & ACK:
                return
            if seg.ack != self.snd_nxt:
                self.rst = rst_for(seg)
                return
            # the ACK of our SYN-ACK: a SYN-ACK still owed (for a retransmitted SYN) is not;
            # left pending, wants_send() stayed true with nothing to send (a spinning timer)
            self.established, self.synack_pending = True, False
            self.snd_una, self.rto_count = seg.ack, 0
            self.remote_edge = (seg.ack + seg.window) & _MASK
            self.remote_window = seg.window
        elif flags & SYN:
            self.rst = rst_for(seg)                # dumbo: a SYN on a running connection resets it
            return
        elif not flags & ACK:
            return
        else:
            self._on_ack(seg, now)
        self._on_data(seg)
        self.serve()

    def _on_ack(self, seg: Segment, now: float) -> None:
        ack = seg.ack
        if seq_lt(self.snd_nxt, ack):              # acks what we never sent
            self.pending_ack = True
            return
        if seq_lt(ack, self.snd_una):              # old duplicate
            return
        if ack != self.snd_una:
            self.snd_una, self.rto_start, self.rto_count = ack, now, 0
            self.dup_ack = False
            if self.fin_sent and ack == self.snd_nxt:
                self.fin_acked = True
        elif (self.snd_una != self.snd_nxt and not seg.payload and not seg.flags & FIN
              and seg.window == self.remote_window):
            self.dup_ack = True                    # RFC 5681's duplicate: retransmit at once
        self.remote_window = seg.window
        edge = (ack + seg.window) & _MASK
        if seq_lt(self.remote_edge, edge):
            self.remote_edge = edge                # the right edge never moves back (dumbo too)
        if self.fin_acked and (self.fin_received or self.closing):
            self.done = True

    def _on_data(self, seg: Segment) -> None:
        data, seq = seg.payload, seg.seq
        if data:
            if seq_lt(seq, self.rcv_nxt):          # (partly) a retransmission: keep the new part
                skip = (self.rcv_nxt - seq) & _MASK
                data, seq = (data[skip:], self.rcv_nxt) if skip < len(data) else (b"", self.rcv_nxt)
                self.pending_ack = True
            if not data:
                pass
            elif seq != self.rcv_nxt or self.fin_received:
                self.pending_ack = True            # out of order (or beyond FIN): dropped, re-ACKed
                return
            elif self.closing:
                self.rcv_nxt = (self.rcv_nxt + len(data)) & _MASK   # discarded, but not stalled
                self.pending_ack = True
            else:
                take = data[:self.local_window()]
                self.rbuf += take
                self.rcv_nxt = (self.rcv_nxt + len(take)) & _MASK
                self.pending_ack = True
                if len(take) < len(data):
                    return                         # the FIN, if any, lies beyond what we took
        if seg.flags & FIN and not self.fin_received:
            if (seq + len(data)) & _MASK == self.rcv_nxt:
                self.fin_received = True
                self.rcv_nxt = (self.rcv_nxt + 1) & _MASK
                self.pending_ack = True
            if self.fin_acked:
                self.done = True

    def serve(self) -> None:
        """Answer the next buffered request once the previous response is fully acked."""
        if self.out and self.snd_una == (self.out_seq + len(self.out)) & _MASK:
            self.out_seq, self.out = self.snd_una, b""
        if self.out or self.fin_seq is not None:
            return
        window_was = self.local_window()
        try:
            n = http.request_length(self.rbuf)
        except http.HttpError as e:
            self._start_response(http.error_response(e))
            return
        if n is not None:
            raw = bytes(self.rbuf[:n])
            del self.rbuf[:n]
            self.requests += 1
            self._start_response(self.respond(raw))
            if window_was < MSS_DEFAULT:
                self.pending_ack = True            # tell a sender stalled on our window
        elif self.fin_received:
            self._close()                          # client done and nothing left to answer

    def _start_response(self, resp: http.Response) -> None:
        self.out_seq, self.out = self.snd_nxt, resp.encode()
        if resp.close:
            self.closing = True
            self.rbuf.clear()
            self._close()

    def _close(self) -> None:
        if self.fin_seq is None:
            self.fin_seq = (self.out_seq + len(self.out)) & _MASK

    # -- sending -----------------------------------------------------------------------
    def deadline(self) -> float | None:
        if self.done or self.rst is not None or self.synack_pending:
            return None
        if not self.established or self.snd_una != self.snd_nxt:
            return self.rto_start + RTO_SECONDS
        return None

    def wants_send(self, now: float) -> bool:
        if self.done:
            return False
        if self.rst is not None or self.synack_pending or self.pending_ack or self.dup_ack:
            return True
        d = self.deadline()
        if d is not None and now >= d:
            return True
        if not self.established:
            return False
        return self._new_data_len() > 0 or self._fin_ready()

    def _data_end(self) -> int:
        return (self.out_seq + len(self.out)) & _MASK

    def _new_data_len(self) -> int:
        end = self._data_end()
        if not self.out or not seq_lt(self.snd_nxt, end) or not seq_lt(self.snd_nxt, self.remote_edge):
            return 0
        limit = end if seq_le(end, self.remote_edge) else self.remote_edge
        return min(self.mss, (limit - self.snd_nxt) & _MASK)

    def _fin_ready(self) -> bool:
        return self.fin_seq is not None and not self.fin_sent and self.snd_nxt == self.fin_seq

    def next_segment(self, now: float) -> tuple[int, int, int, bytes, int | None] | None:
        """(seq, ack, flags, payload, mss option) of the next segment to send, or None."""
        if self.done:
            return None
        if self.rst is not None:
            self.done = True
            return (*self.rst[:2], self.rst[2], b"", None)
        if not self.established:
            if not self.synack_pending:
                if now < self.rto_start + RTO_SECONDS:
                    return None
                if not self._count_rto(now):
                    return self.next_segment(now)
            self.synack_pending, self.rto_start = False, now
            return self.iss, self.rcv_nxt, SYN | ACK, b"", MSS_ADVERTISED
        outstanding = self.snd_una != self.snd_nxt
        if outstanding and now >= self.rto_start + RTO_SECONDS:
            if not self._count_rto(now):
                return self.next_segment(now)
            return self._segment_at(self.snd_una, now, retransmit=True)
        if self.dup_ack and outstanding:
            self.dup_ack = False
            return self._segment_at(self.snd_una, now, retransmit=True)
        self.dup_ack = False
        if self._new_data_len() or self._fin_ready():
            if not outstanding:
                self.rto_start = now
            return self._segment_at(self.snd_nxt, now, retransmit=False)
        if self.pending_ack:
            self.pending_ack = False
            return self.snd_nxt, self.rcv_nxt, ACK, b"", None
        return None

    def _count_rto(self, now: float) -> bool:
        self.rto_count += 1
        if self.rto_count >= RTO_COUNT_MAX:
            self.reset()
            return False
        self.rto_start = now
        return True

    def _segment_at(self, seq: int, now: float, retransmit: bool):
        end = self._data_end()
        payload = b""
        if self.out and seq_lt(seq, end):
            n = (end - seq) & _MASK
            if not retransmit:                     # new data respects the peer's window
                n = min(n, (self.remote_edge - seq) & _MASK)
            n = min(n, self.mss)
            off = (seq - self.out_seq) & _MASK
            payload = self.out[off:off + n]
        flags = ACK | (PSH if payload else 0)
        nxt = (seq + len(payload)) & _MASK
        if self.fin_seq is not None and nxt == self.fin_seq and not self.fin_acked:
            flags |= FIN
            nxt = (nxt + 1) & _MASK
            self.fin_sent = True
        if seq_lt(self.snd_nxt, nxt):
            self.snd_nxt = nxt
        self.pending_ack = False
        return seq, self.rcv_nxt, flags, payload, None


def isn_generator(secret: bytes | None = None) -> Callable[[], int]:
    """Unpredictable initial sequence numbers from one secret drawn at start (RFC 6528's
    idea: a keyed PRF of a counter), so the event loop never asks the kernel for
    randomness. Several stacks may share one generator (one VMM's interfaces)."""
    import hashlib
    import hmac
    import itertools
    import os
    secret = os.urandom(32) if secret is None else secret
    counter = itertools.count()
    return lambda: int.from_bytes(
        hmac.new(secret, next(counter).to_bytes(8, "little"), hashlib.sha256).digest()[:4], "little")


_isn_generator = isn_generator


class TcpHandler:
    """All connections of one listening address/port, plus the RST queue."""

    def __init__(self, port: int, respond: Callable[[bytes], http.Response], *,
                 max_connections: int = MAX_CONNECTIONS,
                 max_pending_resets: int = MAX_PENDING_RESETS,
                 isn: Callable[[], int] | None = None):
        self.port, self.respond = port, respond
        self.max_connections, self.max_pending_resets = max_connections, max_pending_resets
        self._isn = isn or _isn_generator()
        # key (remote ip bytes, remote port) -> (Connection, remote mac)
        self.connections: dict[tuple[bytes, int], tuple[Connection, bytes]] = {}
        # stateless segments to send: RSTs and SYN cookies' SYN-ACKs (bounded together)
        self.resets: collections.deque = collections.deque()
        self.stats: collections.Counter[str] = collections.Counter()
        # the cookie key comes from the ISN PRF: no getrandom on the event loop
        self._cookie_key = b"".join((self._isn() & _MASK).to_bytes(4, "little")
                                    for _ in range(8))

    def _queue_rst(self, key, mac: bytes, rst: tuple[int, int, int],
                   local_port: int | None = None, mss: int | None = None) -> None:
        if len(self.resets) < self.max_pending_resets:
            self.resets.append((key, mac, rst, self.port if local_port is None else local_port,
                                mss))
        else:
            self.stats["rst_dropped"] += 1

    # -- SYN cookies: (keyed hash of the 4-tuple, the peer's ISN, a time slot) with its
    #    low 2 bits replaced by the peer's MSS class ----------------------------------------
    def _cookie(self, key, peer_isn: int, slot: int) -> int:
        ip, port = key
        msg = ip + port.to_bytes(2, "big") + peer_isn.to_bytes(4, "big") + \
            (slot & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        return int.from_bytes(hmac.digest(self._cookie_key, msg, hashlib.sha256)[:4], "big")

    def _send_cookie(self, seg: Segment, key, mac: bytes, now: float) -> None:
        mss = seg.mss or MSS_DEFAULT
        idx = max(i for i, m in enumerate(SYNCOOKIE_MSS) if i == 0 or m <= mss)
        cookie = self._cookie(key, seg.seq, int(now // SYNCOOKIE_SLOT_SECONDS)) & ~3 | idx
        self._queue_rst(key, mac, (cookie, (seg.seq + 1) & _MASK, SYN | ACK), mss=MSS_ADVERTISED)
        self.stats["cookie_sent"] += 1

    def _cookie_mss(self, seg: Segment, key, now: float) -> int | None:
        """The MSS a valid cookie in this ACK carries, or None."""
        cookie, peer_isn = (seg.ack - 1) & _MASK, (seg.seq - 1) & _MASK
        slot = int(now // SYNCOOKIE_SLOT_SECONDS)
        for s in (slot, slot - 1):
            if (self._cookie(key, peer_isn, s) ^ cookie) & ~3 == 0:
                return SYNCOOKIE_MSS[cookie & 3]
        return None

    def _accept_cookie(self, seg: Segment, key, mac: bytes, now: float) -> bool:
        """An ACK for no connection: if it returns a valid cookie, the connection it
        completes (True), or a RST when every slot holds a live established one."""
        mss = self._cookie_mss(seg, key, now)
        if mss is None:
            return False
        if len(self.connections) >= self.max_connections and not (
                self._make_room(now) or self._evict_handshake()):
            self._queue_rst(key, mac, rst_for(seg))
            self.stats["refused"] += 1
            return True
        syn = Segment(seg.sport, seg.dport, (seg.seq - 1) & _MASK, 0, SYN, seg.window, mss, b"")
        conn = Connection(syn, (seg.ack - 1) & _MASK, now, self.respond)
        conn.synack_pending = False
        conn.receive(seg, now)              # the handshake's ACK, and any data or FIN in it
        if not conn.done:
            self.connections[key] = (conn, mac)
        self.stats["opened"] += 1
        self.stats["cookie_accepted"] += 1
        return True

    def _evict_handshake(self) -> bool:
        """Free the slot of the oldest connection still in its handshake: a peer that
        completed a cookie has proved it is there, a half-open one has not."""
        waiting = [(c.last_rx, k) for k, (c, _) in self.connections.items() if not c.established]
        if not waiting:
            return False
        k = min(waiting)[1]
        c, mac = self.connections.pop(k)
        self._queue_rst(k, mac, (c.snd_nxt, c.rcv_nxt, RST | ACK))
        self.stats["evicted_handshake"] += 1
        return True

    def receive(self, seg: Segment, src_ip: bytes, src_mac: bytes, now: float) -> None:
        key = (src_ip, seg.sport)
        if seg.dport != self.port:
            if not seg.flags & RST:
                self._queue_rst(key, src_mac, rst_for(seg), seg.dport)
            self.stats["wrong_port"] += 1
            return
        entry = self.connections.get(key)
        if entry is not None:
            conn = entry[0]
            conn.receive(seg, now)
            if conn.done:
                del self.connections[key]
                self.stats["closed"] += 1
            else:
                self.connections[key] = (conn, src_mac)
            return
        if seg.flags & CONTROL != SYN:
            if seg.flags & (SYN | RST | ACK) == ACK and self._accept_cookie(seg, key, src_mac, now):
                return
            if not seg.flags & RST:
                self._queue_rst(key, src_mac, rst_for(seg))
            self.stats["unexpected"] += 1
            return
        if len(self.connections) >= self.max_connections and not self._make_room(now):
            self._send_cookie(seg, key, src_mac, now)
            return
        self.connections[key] = (Connection(seg, self._isn() & _MASK, now, self.respond), src_mac)
        self.stats["opened"] += 1

    def _make_room(self, now: float) -> bool:
        """Free one slot: a finished exchange (the peer closed and has every byte of its
        answers; dumbo forgets those once its FIN is out), else one idle for over 10 s."""
        for k, (c, mac) in self.connections.items():
            if c.fin_received and not c.out and c.fin_seq is not None:
                del self.connections[k]
                if not c.fin_sent:    # peer waits in FIN_WAIT_2: tell it we are gone
                    self._queue_rst(k, mac, (c.snd_nxt, c.rcv_nxt, RST | ACK))
                self.stats["closed"] += 1
                return True
        for k, (c, mac) in self.connections.items():
            if now - c.last_rx > EVICTION_IDLE_SECONDS:
                del self.connections[k]
                self._queue_rst(k, mac, (c.snd_nxt, c.rcv_nxt, RST | ACK))
                self.stats["evicted"] += 1
                return True
        return False

    def has_pending(self, now: float) -> bool:
        return bool(self.resets) or any(c.wants_send(now) for c, _ in self.connections.values())

    def deadline(self) -> float | None:
        ds = [d for c, _ in self.connections.values() if (d := c.deadline()) is not None]
        return min(ds) if ds else None

    def next_segment(self, now: float):
        """(local port, remote ip, remote port, remote mac, seq, ack, flags, payload, mss),
        or None."""
        if self.resets:
            (ip, port), mac, (seq, ack, flags), local, mss = self.resets.popleft()
            return local, ip, port, mac, seq, ack, flags, b"", mss
        for key, (conn, mac) in list(self.connections.items()):
            if not conn.wants_send(now):
                continue
            seg = conn.next_segment(now)
            if conn.done:
                del self.connections[key]
                self.stats["closed"] += 1
            else:  # round robin: the connection that just sent goes to the back
                del self.connections[key]
                self.connections[key] = (conn, mac)
            if seg is not None:
                return (self.port, key[0], key[1], mac, *seg)
        return None
