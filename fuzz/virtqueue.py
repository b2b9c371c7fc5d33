"""Split-virtqueue chains: descriptor tables, indirect tables and the avail/used rings in
guest memory built from fuzz bytes, parsed by both ring readers.

Properties: `Virtqueue.pop()` returns a chain wholly inside guest memory (no longer
than its tables allow) or raises VirtqueueError, nothing else; `FastRing.pop()` agrees
with it on every input (same chain, or the same refusal); reading, writing and
completing a returned chain stays inside guest memory; each input does bounded work.
"""

from __future__ import annotations

import struct
import sys

from fuzz import common

with common.instrumented():
    from fuzz.harness import MEM_SIZE, Finding, Input, new_memory, wipe
    from nodesvc.vmm.virtio import Virtqueue, VirtqueueError
    from nodesvc.vmm.virtio.queue import MAX_QUEUE_SIZE
    from nodesvc.vmm.virtio.ring import FastRing

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
MEM = new_memory()
SIZES = (1, 2, 4, 8, 16, 256, 32768, 3, 0, 65536)


def _desc(inp: Input, table_hint: list[int]) -> tuple:
    """One descriptor: mostly plausible (inside memory, small), sometimes anything."""
    k = inp.u8()
    addr = inp.pick(table_hint) if k < 40 and table_hint else inp.addr()
    return addr, inp.length(), inp.int_in(0, 7) if inp.u8() < 240 else inp.u16(), inp.u16()


def place(inp: Input, q: Virtqueue, n: int) -> None:
    """Rings at fuzz-chosen (mostly valid) addresses, tables filled from fuzz bytes."""
    view = MEM.regions[0].view
    if inp.u8() < 230:        # the common layout: desc | avail | used back to back
        base = inp.int_in(0, 0x40) * 16
        q.desc_table = base
        q.avail_ring = base + 16 * n
        q.used_ring = (q.avail_ring + 6 + 2 * n + 3) & ~3
    else:
        q.desc_table, q.avail_ring, q.used_ring = inp.addr(), inp.addr(), inp.addr()
    indirect = [0x40000 + 0x1000 * i for i in range(4)]
    for _ in range(inp.int_in(0, min(n, 24)) if n else 0):
        slot = inp.int_in(0, n - 1)
        if q.desc_table + 16 * slot + 16 <= MEM_SIZE:
            _DESC.pack_into(view, q.desc_table + 16 * slot, *_desc(inp, indirect))
    for base in indirect[:inp.int_in(0, 4)]:     # indirect tables some descriptors point at
        for i in range(inp.int_in(0, 8)):
            _DESC.pack_into(view, base + 16 * i, *_desc(inp, indirect))
    if q.avail_ring + 6 + 2 * n <= MEM_SIZE:
        for i in range(inp.int_in(0, min(n, 8))):
            _U16.pack_into(view, q.avail_ring + 4 + 2 * i, inp.u16() if inp.u8() > 200
                           else inp.int_in(0, max(n - 1, 0)))
        _U16.pack_into(view, q.avail_ring + 2, inp.u16() if inp.u8() > 200 else inp.int_in(0, 8))
        _U16.pack_into(view, q.avail_ring, inp.int_in(0, 1))


def _overlap(a, b) -> bool:
    return a[1] > 0 and b[1] > 0 and a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


def _as_tuple(chain):
    return (chain.head, [(d.addr, d.length) for d in chain.readable],
            [(d.addr, d.length) for d in chain.writable])


def _pop(fn):
    try:
        return fn(), None
    except VirtqueueError as e:
        return None, e


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    wipe(MEM)
    n = inp.pick(SIZES)
    try:
        canon = Virtqueue(256 if n > 256 or n & (n - 1) or not n else n)
    except ValueError:
        return
    canon.size = n
    place(inp, canon, n)
    if canon.validate(MEM) is not None:
        return                      # the transport refuses to activate such a queue
    if not 0 < n <= MAX_QUEUE_SIZE:
        raise Finding(f"validate accepted queue size {n}")
    rings = [(canon.desc_table, 16 * n), (canon.avail_ring, 6 + 2 * n),
             (canon.used_ring, 6 + 8 * n)]
    # Rings that overlap each other make the two readers see different bytes (one's
    # avail_event write is the other's descriptor): compare one pop only.
    aliased = any(_overlap(a, b) for i, a in enumerate(rings) for b in rings[i + 1:])
    event_idx = inp.flag() and not aliased
    fast_q = Virtqueue(canon.max_size)
    fast_q.size, fast_q.desc_table = canon.size, canon.desc_table
    fast_q.avail_ring, fast_q.used_ring = canon.avail_ring, canon.used_ring
    canon.activate(MEM, event_idx)
    fast_q.activate(MEM, event_idx)
    fast = FastRing(fast_q)
    for _ in range(1 if aliased else inp.int_in(1, 10)):
        got, err = _pop(canon.pop)
        fgot, ferr = _pop(fast.pop)
        if (err is None) != (ferr is None):
            raise Finding(f"readers disagree: pop {'raised ' + str(err) if err else 'accepted'}, "
                          f"FastRing {'raised ' + str(ferr) if ferr else 'accepted'}")
        if err is not None or got is None:
            if (got is None) != (fgot is None):
                raise Finding("readers disagree on whether a chain is available")
            return
        if _as_tuple(got) != fgot:
            raise Finding(f"readers disagree: {_as_tuple(got)} != {fgot}")
        bufs = got.readable + got.writable
        if len(bufs) > canon.size + MAX_QUEUE_SIZE:
            raise Finding(f"chain of {len(bufs)} buffers from a table of {canon.size}")
        for d in bufs:
            if d.length and not MEM.contains(d.addr, d.length):
                raise Finding(f"buffer [{d.addr:#x}, +{d.length:#x}) outside guest memory")
        canon.read_chain(got, limit=1 << 16)
        if any(_overlap((d.addr, d.length), r) for d in got.writable for r in rings):
            return               # data written over the rings: the readers' views part ways
        written = canon.write_chain(got, b"\xa5" * min(got.writable_len, 1 << 16),
                                    offset=inp.int_in(0, 64))
        if written > got.writable_len:
            raise Finding(f"wrote {written} bytes into {got.writable_len} writable bytes")
        canon.add_used(got.head, written)
        fast.add_used(got.head, written)
        canon.needs_interrupt()


if __name__ == "__main__":
    common.main(test_one_input)
