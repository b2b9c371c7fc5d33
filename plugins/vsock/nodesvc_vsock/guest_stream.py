"""One guest-side stream of the in-process guest (`guest.GuestVsock`): Linux's credit rules.

Receive side: we advertise `buf_alloc`; `fwd_cnt` counts bytes the application
consumed (`take()`), or everything at once in `echo`/`sink` mode. Send side:
never more than the host's credit, `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`;
the rest waits in `tx_chunks` until a CREDIT_UPDATE (or any packet) opens the
window. Methods without a leading underscore that take a timeout run on the
test thread; the rest run on the loop thread.
"""

from __future__ import annotations

import collections

from .packet import (OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_RESPONSE, OP_RST, OP_RW,
                     OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, U32)


class GuestStream:
    def __init__(self, guest, local_port: int, peer_port: int, *, buf_alloc: int = 256 * 1024,
                 echo: bool = False, sink: bool = False, auto_credit: bool = True,
                 max_pkt: int | None = None):
        self.g, self.local_port, self.peer_port = guest, local_port, peer_port
        self.key = (local_port, peer_port)
        self.state = "connecting"
        self.buf_alloc, self.echo, self.sink, self.auto_credit = buf_alloc, echo, sink, auto_credit
        self.max_pkt = max_pkt or guest.tx_buf_size
        self.rx = bytearray()
        self.rx_total = 0              # bytes received (counts sink-mode bytes too)
        self.max_unconsumed = 0        # most bytes ever outstanding beyond our fwd_cnt
        self.fwd_cnt = self.last_fwd_sent = 0
        self.tx_chunks: collections.deque[memoryview] = collections.deque()  # not yet sent
        self.tx_pending = 0
        self.tx_cnt = self.peer_buf_alloc = self.peer_fwd_cnt = 0
        self.peer_shut = 0
        self.credit_updates = 0
        self.on_data = None            # optional callback(stream) after data arrives (loop thread)

    # -- loop thread ----------------------------------------------------------------------
    def send_ctl(self, op: int, flags: int = 0, payload: bytes = b"") -> None:
        self.last_fwd_sent = self.fwd_cnt
        self.g.send_packet(op, self.local_port, self.peer_port, payload, flags=flags,
                           buf_alloc=self.buf_alloc, fwd_cnt=self.fwd_cnt)

    def peer_credit(self) -> int:
        return max(0, self.peer_buf_alloc - ((self.tx_cnt - self.peer_fwd_cnt) & U32))

    def on_packet(self, hdr, payload: bytes) -> None:
        self.peer_buf_alloc, self.peer_fwd_cnt = hdr.buf_alloc, hdr.fwd_cnt
        op = hdr.op
        if op == OP_RESPONSE and self.state == "connecting":
            self.state = "open"
        elif op == OP_RST:
            self.state = "reset" if self.state == "connecting" else "closed"
            self.g.streams.pop(self.key, None)
        elif op == OP_RW:
            self.rx_total += len(payload)
            unconsumed = (self.rx_total - self.fwd_cnt) & U32
            self.max_unconsumed = max(self.max_unconsumed, unconsumed)
            if self.echo or self.sink:
                self._consumed(len(payload))
                if self.echo:
                    self._queue(bytes(payload))  # a copy: the RX buffer goes back to the device
            else:
                self.rx += payload
            if self.on_data is not None:
                self.on_data(self)
        elif op == OP_SHUTDOWN:
            self.peer_shut |= hdr.flags
        elif op == OP_CREDIT_REQUEST:
            self.send_ctl(OP_CREDIT_UPDATE)
        elif op == OP_CREDIT_UPDATE:
            self.credit_updates += 1
        self.pump()

    def _consumed(self, n: int) -> None:
        self.fwd_cnt = (self.fwd_cnt + n) & U32
        # Linux sends an update once the window is half used up by consumed data
        if self.auto_credit and (self.fwd_cnt - self.last_fwd_sent) & U32 >= self.buf_alloc // 2:
            self.send_ctl(OP_CREDIT_UPDATE)

    def _queue(self, data) -> None:
        if len(data):
            self.tx_chunks.append(memoryview(data))
            self.tx_pending += len(data)

    def pump(self) -> None:
        """Send what the host's credit and our free TX slots allow."""
        while self.tx_pending and self.state == "open" and self.g.tx_space():
            first = self.tx_chunks[0]
            n = min(len(first), self.peer_credit(), self.max_pkt)
            if n <= 0:
                return
            if n == len(first):
                self.tx_chunks.popleft()
            else:  # views, not copies: the only copy is into the guest's TX buffer
                self.tx_chunks[0] = first[n:]
            self.tx_pending -= n
            self.tx_cnt = (self.tx_cnt + n) & U32
            self.send_ctl(OP_RW, payload=first[:n])

    # -- test thread ------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        def go():
            self._queue(data)
            self.pump()
        self.g.call(go)

    def read(self, n: int, timeout: float = 5.0) -> bytes:
        """Exactly `n` bytes (consuming them, which returns credit to the host)."""
        self.g.wait(lambda: len(self.rx) >= n or self.state != "open", timeout,
                    f"{n} bytes on {self.key}")

        def take():
            if len(self.rx) < n:
                raise ConnectionError(f"stream {self.key} {self.state} after {len(self.rx)} bytes")
            out = bytes(self.rx[:n])
            del self.rx[:n]
            self._consumed(n)
            return out
        return self.g.call(take)

    def sent_all(self, timeout: float = 10.0) -> None:
        self.g.wait(lambda: not self.tx_pending, timeout, f"{self.key} to drain its output")

    def shutdown(self, flags: int = SHUTDOWN_RCV | SHUTDOWN_SEND) -> None:
        self.g.call(self.send_ctl, OP_SHUTDOWN, flags)

    def credit_update(self, fwd_cnt: int | None = None) -> None:
        """Tell the host we consumed up to `fwd_cnt` (default: what we really consumed)."""
        def go():
            if fwd_cnt is not None:
                self.fwd_cnt = fwd_cnt & U32
            self.send_ctl(OP_CREDIT_UPDATE)
        self.g.call(go)

    def wait_state(self, state: str, timeout: float = 5.0) -> None:
        self.g.wait(lambda: self.state == state, timeout, f"{self.key} to become {state}")


__all__ = ["GuestStream", "SHUTDOWN_RCV", "SHUTDOWN_SEND"]
