"""One stream between a guest AF_VSOCK socket and a host Unix socket.

States (Firecracker's csm, simplified):

    LOCAL_INIT ──guest RESPONSE──► ESTABLISHED ◄──RESPONSE sent── PEER_INIT
         │                              │ SHUTDOWN both ways / RST / errors / timeouts
         └───────── RST / timeout ──────┴──────────────► DEAD (RST pending, then removed)

Flow control, both directions (all counters wrap at 2**32):
  * guest → host: we advertise `buf_alloc` and `fwd_cnt` (bytes written to the host
    socket). Bytes the host socket refuses wait in `tx_buf`, which can never exceed
    `buf_alloc` for a guest that honours credit; one that doesn't is reset.
  * host → guest: we read from the host socket only as much as the guest's credit
    (`peer_buf_alloc - (rx_cnt - peer_fwd_cnt)`) and its RX buffer allow.

The connection never touches epoll or the RX queue itself: after every call the
muxer reads `interest()`, `pending` and `state` and acts on them.
"""

from __future__ import annotations

import select
import socket
import time

from .packet import (HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE,
                     OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, U32,
                     Header)

LOCAL_INIT, PEER_INIT, ESTABLISHED, DEAD = "local-init", "peer-init", "established", "dead"
# What the connection wants to tell the guest, highest priority first.
P_RST, P_RESPONSE, P_REQUEST, P_RW, P_SHUTDOWN, P_CREDIT_REQUEST, P_CREDIT_UPDATE = (
    1, 2, 4, 8, 16, 32, 64)

CONN_BUF = 256 * 1024
#: Announce fwd_cnt once this much was forwarded unannounced: well inside the window,
#: so a guest sending flat out never stalls waiting for credit.
CREDIT_UPDATE_THRESHOLD = CONN_BUF // 4
CLOSE_TIMEOUT = 2.0    # after we shut both ways, wait this long for the guest's RST
DRAIN_TIMEOUT = 10.0   # guest closed but the host reads nothing of what is left for this long
_NOSIGNAL = socket.MSG_NOSIGNAL


class Connection:
    def __init__(self, sock: socket.socket | None, guest_cid: int, local_port: int, peer_port: int,
                 state: str, *, deadline: float | None = None):
        self.sock, self.fd = sock, sock.fileno()
        self.guest_cid, self.local_port, self.peer_port = guest_cid, local_port, peer_port
        self.key = (local_port, peer_port)
        self.state = state
        self.host_initiated = state == LOCAL_INIT
        self.pending = P_REQUEST if state == LOCAL_INIT else P_RESPONSE
        self.deadline = deadline
        self.request_sent = False
        self.buf_alloc = CONN_BUF
        self.fwd_cnt = self.last_fwd_cnt_sent = 0
        self.tx_buf = bytearray()
        self.tx_total = 0          # guest payload bytes received (wrapping)
        self.ok_left = 0           # bytes of the "OK <port>\n" line still at the front of tx_buf
        self.peer_buf_alloc = self.peer_fwd_cnt = self.rx_cnt = 0
        self.credit_requested = False
        self.peer_shut = 0         # SHUTDOWN flags the guest sent us
        self.local_shut = 0        # SHUTDOWN flags we delivered to the guest
        self.shut_pending = 0      # flags for our next SHUTDOWN packet
        self.host_eof = self.host_hup = self.host_wr_shut = False

    # -- credit --------------------------------------------------------------------------
    def peer_credit(self) -> int:
        in_flight = (self.rx_cnt - self.peer_fwd_cnt) & U32
        return max(0, self.peer_buf_alloc - in_flight)

    def _maybe_credit_update(self) -> None:
        if (self.fwd_cnt - self.last_fwd_cnt_sent) & U32 >= CREDIT_UPDATE_THRESHOLD:
            self.pending |= P_CREDIT_UPDATE

    # -- what the muxer reads -------------------------------------------------------------
    def interest(self) -> int | None:
        """epoll events wanted on the host socket; None = leave it out of epoll entirely."""
        if self.state == DEAD or self.host_hup:
            return None  # a hung-up socket reports HUP forever; we drain it from RX instead
        ev = select.EPOLLOUT if self.tx_buf else 0
        if (self.state == ESTABLISHED and not self.host_eof and not self.peer_shut & SHUTDOWN_RCV
                and not self.pending & P_RW and self.peer_credit() > 0):
            ev |= select.EPOLLIN
        return ev

    def kill(self, rst: bool = True) -> None:
        """Give up on the stream; the guest hears an RST if `rst` (the muxer closes the socket)."""
        self.state = DEAD
        self.pending = P_RST if rst else 0
        self.tx_buf.clear()
        self.deadline = None

    def expire(self) -> None:
        self.kill(rst=self.state != LOCAL_INIT or self.request_sent)

    # -- host socket events ---------------------------------------------------------------
    def on_host_event(self, ev: int) -> None:
        if self.state == DEAD:
            return
        if ev & select.EPOLLERR or (ev & select.EPOLLHUP and self.state != ESTABLISHED):
            self.expire()
            return
        if ev & select.EPOLLOUT:
            self._flush()
            if self.state == DEAD:
                return
        if ev & select.EPOLLIN:
            self.pending |= P_RW
        if ev & select.EPOLLHUP and self.state == ESTABLISHED:
            self.host_hup = True
            if self.tx_buf:
                self._flush()  # fails (EPIPE) if the host really is gone: undeliverable → RST
                if self.state == DEAD:
                    return
            if self.host_eof or self.peer_shut & SHUTDOWN_RCV:
                self._queue_shutdown(SHUTDOWN_RCV | SHUTDOWN_SEND)
            else:
                self.pending |= P_RW  # drain what is left; the EOF read then shuts us down

    # -- guest → host ---------------------------------------------------------------------
    def on_guest_packet(self, hdr: Header, views) -> None:
        self.peer_buf_alloc, self.peer_fwd_cnt = hdr.buf_alloc, hdr.fwd_cnt
        if self.peer_credit() > 0:
            self.credit_requested = False
        op = hdr.op
        if op == OP_RST:
            self.kill(rst=False)
        elif self.state == DEAD:
            pass
        elif self.state == LOCAL_INIT:
            if op == OP_RESPONSE and self.request_sent:
                self.state, self.deadline = ESTABLISHED, None
                line = b"OK %d\n" % self.local_port
                self.tx_buf += line
                self.ok_left = len(line)
                self._flush()
            else:
                self.kill()
        elif self.state != ESTABLISHED:
            self.kill()  # PEER_INIT: the guest must wait for our RESPONSE
        elif op == OP_RW:
            if self.peer_shut & SHUTDOWN_SEND:
                self.kill()  # data after promising to send no more
            elif hdr.len:
                self._write(views, hdr.len)
        elif op == OP_CREDIT_REQUEST:
            self.pending |= P_CREDIT_UPDATE
        elif op == OP_SHUTDOWN:
            self.peer_shut |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND)
            self._after_peer_shutdown()
        elif op != OP_CREDIT_UPDATE:
            self.kill()  # REQUEST/RESPONSE on a live stream, unknown ops

    def _write(self, views, n: int) -> None:
        if (self.tx_total + n - self.fwd_cnt) & U32 > self.buf_alloc:
            self.kill()  # the guest ignored our credit
            return
        self.tx_total = (self.tx_total + n) & U32
        sent = 0
        if not self.tx_buf:
            try:  # straight from guest memory, no copy
                sent = self.sock.sendmsg(views, (), _NOSIGNAL)
            except BlockingIOError:
                pass
            except OSError:
                self.kill()
                return
            self.fwd_cnt = (self.fwd_cnt + sent) & U32
        if sent < n:  # keep the rest: the guest's buffers go back to it now
            skip = sent
            for v in views:
                if skip >= len(v):
                    skip -= len(v)
                    continue
                self.tx_buf += v[skip:]
                skip = 0
        self._maybe_credit_update()

    def _flush(self) -> None:
        while self.tx_buf:
            try:
                sent = self.sock.send(self.tx_buf, _NOSIGNAL)
            except BlockingIOError:
                break
            except OSError:
                self.kill()
                return
            del self.tx_buf[:sent]  # cheap: bytearray drops its head in O(1)
            ok = min(sent, self.ok_left)
            self.ok_left -= ok
            self.fwd_cnt = (self.fwd_cnt + sent - ok) & U32
            if self.peer_shut == SHUTDOWN_RCV | SHUTDOWN_SEND:
                self.deadline = time.monotonic() + DRAIN_TIMEOUT  # still making progress
        self._maybe_credit_update()
        if not self.tx_buf and self.peer_shut:
            self._after_peer_shutdown()

    def _after_peer_shutdown(self) -> None:
        if self.tx_buf:  # forward everything the guest sent before acting on its shutdown
            if self.peer_shut == SHUTDOWN_RCV | SHUTDOWN_SEND and self.deadline is None:
                self.deadline = time.monotonic() + DRAIN_TIMEOUT
            return
        if self.peer_shut & SHUTDOWN_SEND and not self.host_wr_shut:
            self.host_wr_shut = True
            try:
                self.sock.shutdown(socket.SHUT_WR)  # the host reader sees EOF
            except OSError:
                pass
        if self.peer_shut == SHUTDOWN_RCV | SHUTDOWN_SEND:
            self.kill()  # the guest is done both ways and waits for our RST

    # -- host → guest ---------------------------------------------------------------------
    def _queue_shutdown(self, flags: int) -> None:
        new = flags & ~(self.local_shut | self.shut_pending)
        if new:
            self.shut_pending |= new
            self.pending |= P_SHUTDOWN

    def _host_eof(self) -> None:
        self.host_eof = True
        flags = SHUTDOWN_SEND
        p = select.poll()
        p.register(self.fd, 0)
        if any(ev & select.POLLHUP for _, ev in p.poll(0)):
            flags |= SHUTDOWN_RCV  # the host closed entirely: it will not read either
        self._queue_shutdown(flags)

    def _hdr(self, op: int, length: int = 0, flags: int = 0) -> Header:
        self.last_fwd_cnt_sent = self.fwd_cnt  # every packet carries our credit
        self.pending &= ~P_CREDIT_UPDATE
        return Header(HOST_CID, self.guest_cid, self.local_port, self.peer_port, length,
                      TYPE_STREAM, op, flags, self.buf_alloc, self.fwd_cnt)

    def fill(self, buf) -> Header | None:
        """Produce the next packet for the guest into RX buffer `buf`, or None."""
        p = self.pending
        if p & P_RST:
            self.pending = 0
            return self._hdr(OP_RST)
        if p & P_RESPONSE:
            self.pending &= ~P_RESPONSE
            self.state = ESTABLISHED
            return self._hdr(OP_RESPONSE)
        if p & P_REQUEST:
            self.pending &= ~P_REQUEST
            self.request_sent = True
            return self._hdr(OP_REQUEST)
        if p & P_RW and buf.room > 0:
            hdr = self._fill_rw(buf)
            if hdr is not None:
                return hdr
        if self.pending & P_SHUTDOWN:
            flags, self.shut_pending = self.shut_pending, 0
            self.pending &= ~P_SHUTDOWN
            self.local_shut |= flags
            if self.local_shut == SHUTDOWN_RCV | SHUTDOWN_SEND:
                self.deadline = time.monotonic() + CLOSE_TIMEOUT
            return self._hdr(OP_SHUTDOWN, flags=flags)
        if self.pending & P_CREDIT_REQUEST:
            self.pending &= ~P_CREDIT_REQUEST
            return self._hdr(OP_CREDIT_REQUEST)
        if self.pending & P_CREDIT_UPDATE:
            return self._hdr(OP_CREDIT_UPDATE)
        return None

    def _fill_rw(self, buf) -> Header | None:
        self.pending &= ~P_RW
        if self.state != ESTABLISHED or self.host_eof or self.peer_shut & SHUTDOWN_RCV:
            return None
        credit = self.peer_credit()
        if credit == 0:
            if not self.credit_requested:  # ask once; the guest's answer re-opens reading
                self.credit_requested = True
                self.pending |= P_CREDIT_REQUEST
            return None
        try:
            n = buf.recv_from(self.sock, min(buf.room, credit))
        except BlockingIOError:
            return None  # drained; epoll tells us when there is more
        except OSError:
            self.kill(rst=False)
            return self._hdr(OP_RST)
        if n == 0:
            self._host_eof()
            return None
        self.pending |= P_RW  # there may be more: stay in the RX round-robin
        self.rx_cnt = (self.rx_cnt + n) & U32
        return self._hdr(OP_RW, n)
