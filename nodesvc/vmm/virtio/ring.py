"""Lean access to an activated split virtqueue: the ring reader blk, net and vsock share.

`Virtqueue.pop()` is the canonical, fully validating parser, but it builds
dataclasses and goes through `GuestMemory.view()` (a region search) for every
16-byte read — about 10 µs a request, which alone would cap the device below
100k IOPS. `FastRing` reads the rings with precompiled structs straight from the
low-RAM region's memoryview and accepts only a strict subset of what `pop()`
accepts: descriptors wholly inside low RAM, readable before writable, no longer
than their table, and at most one level of indirection (a lone indirect head, as
Linux sends every multi-buffer request). Anything else (nested or mixed indirect,
high RAM, a bad index, a loop, a jumped avail index) is left to `pop()`, which re-reads it and either
returns the chain or raises VirtqueueError. So the fast path can never accept
what the canonical one rejects (tests/unit/test_virtio_blk.py checks this
differentially with hypothesis).

Chains are returned as `(head, readable, writable)` with lists of `(gpa, len)`;
`views()` turns such a list into zero-copy memoryviews. The queue's own
`next_avail`/`next_used` counters stay the single source of truth, so
`undo_pop()` and `needs_interrupt()` keep working. Build a `FastRing` when the
queue is activated (it reads the ring addresses once) and drop it on reset.
"""

from __future__ import annotations

import struct

from .constants import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE
from .queue import MAX_QUEUE_SIZE

_DESC = struct.Struct("<QIHH")      # addr, len, flags, next
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")    # id, len
_MAX_INDIRECT = 16 * MAX_QUEUE_SIZE   # the canonical parser's bound on an indirect table
# bound methods: one attribute lookup fewer per call on the hot path
_unpack_desc, _unpack_u16, _pack_u16 = _DESC.unpack_from, _U16.unpack_from, _U16.pack_into
_pack_used = _USED_ELEM.pack_into
_EMPTY = memoryview(bytearray())     # a zero-length buffer's view, wherever it points


class FastRing:
    def __init__(self, queue, memory=None):
        memory = queue.memory if memory is None else memory
        self.q, self.memory = queue, memory
        # A queue the transport did not activate is never read (its addresses mean nothing).
        self.idle = memory is None
        low = memory.regions[0] if memory is not None else None
        self.ram = low.view if low is not None and low.guest_addr == 0 else None
        self.ram_end = low.end if self.ram is not None else 0
        n = queue.size
        self._size, self._mask = n, n - 1
        self._desc, self._avail, self._used = queue.desc_table, queue.avail_ring, queue.used_ring
        end = self.ram_end
        # Rings outside low RAM (a >3 GiB guest putting them high) use the canonical path.
        self.fast = (not self.idle and self.ram is not None and self._desc + 16 * n <= end
                     and self._avail + 6 + 2 * n <= end and self._used + 6 + 8 * n <= end)
        self._avail_event = self._used + 4 + 8 * n
        self._seen_avail = queue.next_avail   # last avail idx read from the guest

    # -- views of guest buffers (zero-copy) ---------------------------------------------
    def views(self, bufs) -> list[memoryview]:
        """Writable memoryviews of `(gpa, len)` buffers (already validated by the parser).
        A zero-length buffer may lie anywhere (the parser accepts it): it gets an empty view."""
        ram, end, mem = self.ram, self.ram_end, self.memory
        return [ram[a:a + n] if a + n <= end else mem.view(a, n) if n else _EMPTY
                for a, n in bufs]

    def view(self, gpa: int, n: int) -> memoryview:
        """One buffer of a parsed chain (as `GuestMemory.view`, without the region search)."""
        if gpa + n <= self.ram_end:
            return self.ram[gpa:gpa + n]
        return self.memory.view(gpa, n) if n else _EMPTY

    def nonempty_views(self, bufs) -> list[memoryview]:
        """`views()` without zero-length buffers (readv/writev would only skip them)."""
        return self.views([b for b in bufs if b[1]])

    def put_u8(self, gpa: int, value: int) -> None:
        if gpa < self.ram_end:
            self.ram[gpa] = value
        else:
            self.memory.view(gpa, 1)[0] = value

    # -- driver → device ------------------------------------------------------------------
    def pop(self):
        """The next available chain as (head, readable, writable), or None."""
        q = self.q
        if not self.fast:
            return None if self.idle else self._canonical_pop()
        ram, nxt, size = self.ram, q.next_avail, self._size
        pending = (self._seen_avail - nxt) & 0xFFFF
        if pending == 0 or pending > size:   # used up (or stale): read the guest's index
            self._seen_avail = _unpack_u16(ram, self._avail + 2)[0]
            pending = (self._seen_avail - nxt) & 0xFFFF
            if pending == 0:
                return None
            if pending > size:
                return self._canonical_pop()      # raises: avail index jumped
        head = _unpack_u16(ram, self._avail + 4 + 2 * (nxt & self._mask))[0]
        if head >= size:
            return self._canonical_pop()
        # One walk for both shapes, inlined: this runs once per request.
        end = self.ram_end
        addr, length, flags, index = _unpack_desc(ram, self._desc + 16 * head)
        if flags & DESC_F_INDIRECT:   # Linux's shape for every multi-buffer request
            if (flags & DESC_F_NEXT or length & 15 or not 0 < length <= _MAX_INDIRECT
                    or addr + length > end):
                return self._canonical_pop()
            table, count = addr, length >> 4
            addr, length, flags, index = _unpack_desc(ram, table)
        else:
            table, count = self._desc, size
        readable: list = []
        writable: list = []
        seen = 1
        while True:
            if flags & DESC_F_INDIRECT or addr + length > end:
                return self._canonical_pop()
            if flags & DESC_F_WRITE:
                writable.append((addr, length))
            elif writable:
                return self._canonical_pop()
            else:
                readable.append((addr, length))
            if not flags & DESC_F_NEXT:
                break
            if index >= count or seen >= count:   # out of the table, or a loop
                return self._canonical_pop()
            seen += 1
            addr, length, flags, index = _unpack_desc(ram, table + 16 * index)
        q.next_avail = nxt = (nxt + 1) & 0xFFFF
        if q.event_idx:   # avail_event: ask for a kick once the driver posts past this
            _pack_u16(ram, self._avail_event, nxt)
        return head, readable, writable

    def has_available(self) -> bool:
        return not self.idle and self.q.has_available()

    def _canonical_pop(self):
        chain = self.q.pop()
        if chain is None:
            return None
        return (chain.head, [(d.addr, d.length) for d in chain.readable],
                [(d.addr, d.length) for d in chain.writable])

    def undo_pop(self) -> None:
        self.q.undo_pop()

    # -- device → driver --------------------------------------------------------------------
    def add_used(self, head: int, written: int) -> None:
        q = self.q
        if not self.fast:
            q.add_used(head, written)
            return
        ram, used, idx = self.ram, self._used, q.next_used
        _pack_used(ram, used + 4 + 8 * (idx & self._mask), head, written)
        q.next_used = idx = (idx + 1) & 0xFFFF
        _pack_u16(ram, used + 2, idx)   # publish after the element


# -- (gpa, len) buffer lists, as FastRing.pop() returns them --------------------------------
# `mem` is anything with `view(gpa, n)`: a FastRing (fast) or a GuestMemory.

def buffers_len(bufs) -> int:
    """Total bytes of a list of `(gpa, len)` buffers."""
    return sum(n for _, n in bufs)


def skip(bufs, n: int) -> list:
    """The buffers that follow the first `n` bytes."""
    out = []
    for a, ln in bufs:
        if n >= ln:
            n -= ln
            continue
        out.append((a + n, ln - n))
        n = 0
    return out


def take(bufs, n: int) -> list:
    """The buffers that hold the first `n` bytes (fewer if they are shorter)."""
    out = []
    for a, ln in bufs:
        if n <= 0:
            break
        k = min(ln, n)
        out.append((a, k))
        n -= k
    return out


def gather(mem, bufs, n: int) -> bytes:
    """A copy of the first `n` bytes of the buffers (fewer if they are shorter)."""
    return b"".join(bytes(mem.view(a, k)) for a, k in take(bufs, n) if k)


def scatter(views, data, offset: int = 0) -> int:
    """Write `data` from byte `offset` of the views (which may split anywhere); returns bytes written."""
    data, done = memoryview(data), 0
    for v in views:
        if offset >= len(v):
            offset -= len(v)
            continue
        k = min(len(v) - offset, len(data) - done)
        if k <= 0:
            break
        v[offset:offset + k] = data[done:done + k]
        done += k
        offset = 0
    return done
