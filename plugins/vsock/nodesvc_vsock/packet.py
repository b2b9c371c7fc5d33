"""virtio-vsock packets: the 44-byte header, op codes, and moving packets through chains.

Packets are never materialised as Python byte strings on the data path: TX
payloads are handed to the host socket as views of guest memory, and RX payloads
are read from the host socket straight into the guest's buffer (`RxBuffer`).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from nodesvc.vmm.virtio.ring import buffers_len, gather, scatter, skip, take

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

    `chain` is `(head, readable, writable)` as `FastRing.pop()` returns it; `memory` is the
    ring (or a GuestMemory). The header may be split across descriptors (older Linux puts
    it in its own buffer); the payload views cover exactly `hdr.len` bytes of guest memory.
    """
    readable = chain[1]
    total = buffers_len(readable)
    if total < HDR_SIZE:
        return None
    hdr = Header(*HDR.unpack(gather(memory, readable, HDR_SIZE)))
    if hdr.len > MAX_PKT_PAYLOAD or hdr.len > total - HDR_SIZE:
        return None
    return hdr, [memory.view(a, n) for a, n in take(skip(readable, HDR_SIZE), hdr.len) if n]


class RxBuffer:
    """One guest RX chain being filled: payload goes straight from a socket into guest memory."""

    __slots__ = ("memory", "chain", "room", "_views")

    def __init__(self, memory, chain):
        self.memory, self.chain = memory, chain
        self.room = buffers_len(chain[2]) - HDR_SIZE  # negative: too small even for a header
        self._views: list[memoryview] | None = None

    @property
    def head(self) -> int:
        return self.chain[0]

    def payload_views(self) -> list[memoryview]:
        if self._views is None:
            self._views = [self.memory.view(a, n) for a, n in skip(self.chain[2], HDR_SIZE) if n]
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
        scatter(self.payload_views(), data)

    def finish(self, hdr: Header) -> int:
        """Write the header; returns the byte count for the used ring."""
        scatter([self.memory.view(a, n) for a, n in take(self.chain[2], HDR_SIZE)], hdr.pack())
        return HDR_SIZE + hdr.len
