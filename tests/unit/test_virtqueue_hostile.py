"""Property test: whatever a hostile driver writes into the rings, the queue either
returns a well-formed chain inside guest memory or raises VirtqueueError."""

from hypothesis import given, settings, strategies as st

from nodesvc.vmm.memory import GuestMemory
from nodesvc.vmm.virtio import Virtqueue, VirtqueueError
from nodesvc.vmm.virtio.queue import _DESC

MEM = 1 << 20
QSIZE = 8
DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000

addr = st.one_of(st.integers(0, MEM + 4096), st.integers(0, (1 << 64) - 1))
length = st.one_of(st.integers(0, 8192), st.integers(0, (1 << 32) - 1))
flags = st.integers(0, 7)
desc = st.tuples(addr, length, flags, st.integers(0, 0xFFFF))

_mem = GuestMemory(MEM)


@settings(max_examples=300, deadline=None)
@given(descs=st.lists(desc, min_size=QSIZE, max_size=QSIZE),
       heads=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=4),
       avail_idx=st.integers(0, 0xFFFF),
       indirect=st.lists(desc, max_size=6))
def test_hostile_rings_never_escape(descs, heads, avail_idx, indirect):
    mem = _mem
    mem.view(0, 0x10000)[:] = bytes(0x10000)
    for i, d in enumerate(descs):
        _DESC.pack_into(mem.view(DESC + 16 * i, 16), 0, *d)
    for i, d in enumerate(indirect):  # an indirect table at 0x8000 some descriptors may point to
        _DESC.pack_into(mem.view(0x8000 + 16 * i, 16), 0, *d)
    for i, h in enumerate(heads):
        mem.write_u16(AVAIL + 4 + 2 * i, h)
    mem.write_u16(AVAIL + 2, avail_idx)
    q = Virtqueue(QSIZE)
    q.desc_table, q.avail_ring, q.used_ring = DESC, AVAIL, USED
    assert q.validate(mem) is None
    q.activate(mem, event_idx=True)
    for _ in range(len(heads)):
        try:
            chain = q.pop()
        except VirtqueueError:
            return
        if chain is None:
            return
        bufs = chain.readable + chain.writable
        assert len(bufs) <= max(QSIZE, 6)
        for b in bufs:
            assert b.length == 0 or mem.contains(b.addr, b.length)
        # reading and writing the chain stays inside guest memory
        q.read_chain(chain, limit=1 << 16)
        q.write_chain(chain, b"x" * min(chain.writable_len, 1 << 16))
        q.add_used(chain.head, 0)
