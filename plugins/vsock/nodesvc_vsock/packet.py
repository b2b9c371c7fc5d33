"""virtio-vsock packets: the 44-byte header, op codes, and moving packets through chains.

Packets are never materialised as Python byte strings on the data path: TX
payloads are handed to the host socket as views of guest memory, and RX payloads
are read from the host socket straight into the guest's buffer (`RxBuffer`).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

HDR = struct.Struct("<QQIIIHHIII")
HDR_SIZE = HDR.size  # 44
assert HDR_SIZE == 44

HOST_CID = 2
TYPE_STREAM = 1
(OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE,
 OP_CREDIT_REQUEST) = range(1, 8)
OP_NAMES = {1: "REQUEST", 2: "RESPONSE", 3: "RST", 4: "SHUTDOWN", 5: "RW",
            6: "CREDIT_UPDATE", 7: "CREDIT_REQUEST"}
SHUTDOWN_RCV, SHUTDOWN_SEND = 1, 2
EVENT_TRANSPORT_RESET = 0
#: Largest payload we accept from the guest in one packet (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
MAX_PKT_PAYLOAD = 64 * 1024
U32 = 0xFFFF_FFFF


class Header(NamedTuple):
    src_cid: int
    dst_cid: int
    src_port: int
    dst_port: int
    len: int
    type: int
    op: int
    flags: int
    buf_alloc: int
    fwd_cnt: int

    def pack(self) -> bytes:
        return HDR.pack(*self)

    def __str__(self) -> str:  # for logs and test failure messages
        op = OP_NAMES.get(self.op, str(self.op))
        return (f"{op} {self.src_cid}:{self.src_port}->{self.dst_cid}:{self.dst_port} "
                f"len={self.len} flags={self.flags} buf_alloc={self.buf_alloc} "
                f"fwd_cnt={self.fwd_cnt}")


def parse_tx(memory, chain) -> tuple[Header, list[memoryview]] | None:
    """Header and payload views of a guest TX chain, or None when the packet is malformed.

    The header may be split across descriptors (older Linux puts it in its own
    buffer); the payload views cover exactly `hdr.len` bytes of guest memory.
    """
    if chain.readable_len < HDR_SIZE:
        return None
    first = chain.readable[0]
    if first.length >= HDR_SIZE:
        hdr = Header(*HDR.unpack_from(memory.view(first.addr, HDR_SIZE)))
    else:
        raw = bytearray()
        for d in chain.readable:
            raw += memory.view(d.addr, min(d.length, HDR_SIZE - len(raw)))
            if len(raw) == HDR_SIZE:
                break
        hdr = Header(*HDR.unpack(raw))
    if hdr.len > MAX_PKT_PAYLOAD or hdr.len > chain.readable_len - HDR_SIZE:
        return None
    views, skip, want = [], HDR_SIZE, hdr.len
    for d in chain.readable:
        if want == 0:
            break
        if skip >= d.length:
            skip -= d.length
            continue
        take = min(d.length - skip, want)
        views.append(memory.view(d.addr + skip, take))
        want -= take
        skip = 0
    return hdr, views


class RxBuffer:
    """One guest RX chain being filled: payload goes straight from a socket into guest memory."""

    __slots__ = ("memory", "chain", "room", "_views", "_whole")

    def __init__(self, memory, chain):
        self.memory, self.chain = memory, chain
        self.room = chain.writable_len - HDR_SIZE  # negative: too small even for a header
        self._views: list[memoryview] | None = None
        self._whole = None

    def payload_views(self) -> list[memoryview]:
        if self._views is None and len(self.chain.writable) == 1:  # the common case: one view
            d = self.chain.writable[0]
            self._whole = self.memory.view(d.addr, d.length)
            self._views = [self._whole[HDR_SIZE:]]
        elif self._views is None:
            views, skip = [], HDR_SIZE
            for d in self.chain.writable:
                if skip >= d.length:
                    skip -= d.length
                    continue
                views.append(self.memory.view(d.addr + skip, d.length - skip))
                skip = 0
            self._views = views
        return self._views

    def recv_from(self, sock, limit: int) -> int:
        """Read up to `limit` bytes from `sock` into the payload area.

        Returns the count (0 = EOF); raises BlockingIOError when nothing is there.
        """
        got = 0
        for view in self.payload_views():
            want = min(len(view), limit - got)
            if want <= 0:
                break
            try:
                n = sock.recv_into(view, want)
            except BlockingIOError:
                if got:
                    break
                raise
            got += n
            if n < want:
                break
        return got

    def write_payload(self, data: bytes) -> None:
        done = 0
        for view in self.payload_views():
            take = min(len(view), len(data) - done)
            view[:take] = data[done:done + take]
            done += take
            if done == len(data):
                return

    def finish(self, hdr: Header) -> int:
        """Write the header; returns the byte count for the used ring."""
        raw = hdr.pack()
        if self._whole is not None:
            self._whole[:HDR_SIZE] = raw
            return HDR_SIZE + hdr.len
        done = 0
        for d in self.chain.writable:
            take = min(d.length, HDR_SIZE - done)
            self.memory.view(d.addr, take)[:] = raw[done:done + take]
            done += take
            if done == HDR_SIZE:
                break
        return HDR_SIZE + hdr.len
