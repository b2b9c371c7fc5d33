"""Split virtqueue processing, pure (guest memory in, no fds), distrustful of the guest.

Every index, address and length read from guest memory is validated; anything
malformed raises `VirtqueueError` and the transport puts the device into
NEEDS_RESET. The VMM never follows a loop forever, never reads or writes outside
guest memory, and never allocates more than the chain's real buffers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import GuestMemoryError, VmmError
from .constants import AVAIL_F_NO_INTERRUPT, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE

_DESC = struct.Struct("<QIHH")      # addr, len, flags, next
_USED_ELEM = struct.Struct("<II")  # id, len
_U16 = struct.Struct("<H")
MAX_QUEUE_SIZE = 32768


class VirtqueueError(VmmError):
    """The driver put something malformed in a queue."""


@dataclass
class Descriptor:
    addr: int
    length: int
    write: bool


@dataclass
class DescriptorChain:
    head: int
    readable: list[Descriptor] = field(default_factory=list)
    writable: list[Descriptor] = field(default_factory=list)

    @property
    def readable_len(self) -> int:
        return sum(d.length for d in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(d.length for d in self.writable)


def _u16(x: int) -> int:
    return x & 0xFFFF


class Virtqueue:
    """One split virtqueue. Configured by the transport; driven by a device."""

    def __init__(self, max_size: int):
        if not 0 < max_size <= MAX_QUEUE_SIZE or max_size & (max_size - 1):
            raise ValueError(f"queue size {max_size} must be a power of two ≤ {MAX_QUEUE_SIZE}")
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        self.memory = None   # until activated again: nothing reads a reset queue's rings
        self.size = self.max_size
        self.ready = False
        self.desc_table = self.avail_ring = self.used_ring = 0
        self.next_avail = 0
        self.next_used = 0
        self.event_idx = False
        self._signalled_used: int | None = None

    # -- set-up -----------------------------------------------------------------
    def validate(self, memory) -> str | None:
        """Why this queue cannot be activated, or None when it can."""
        n = self.size
        if not 0 < n <= self.max_size or n & (n - 1):
            return f"size {n} is not a power of two ≤ {self.max_size}"
        for name, addr, align, length in (("descriptor table", self.desc_table, 16, 16 * n),
                                          ("available ring", self.avail_ring, 2, 6 + 2 * n),
                                          ("used ring", self.used_ring, 4, 6 + 8 * n)):
            if addr % align:
                return f"{name} at {addr:#x} is not {align}-byte aligned"
            if not memory.contains(addr, length):
                return f"{name} [{addr:#x}, +{length:#x}) is outside guest memory"
        return None

    def activate(self, memory, event_idx: bool) -> None:
        self.memory, self.event_idx = memory, event_idx
        self.next_avail = self.next_used = 0
        self._signalled_used = None
        # Ring views are taken once (validated above) so the hot path does no lookups.
        n = self.size
        self._desc = memory.view(self.desc_table, 16 * n)
        self._avail = memory.view(self.avail_ring, 6 + 2 * n)
        self._used = memory.view(self.used_ring, 6 + 8 * n)

    # -- snapshots --------------------------------------------------------------------
    def save_state(self) -> dict:
        """What a snapshot keeps (Firecracker's QueueState): set-up and both indices."""
        return {"max_size": self.max_size, "size": self.size, "ready": self.ready,
                "desc_table": self.desc_table, "avail_ring": self.avail_ring,
                "used_ring": self.used_ring, "next_avail": self.next_avail,
                "next_used": self.next_used, "event_idx": self.event_idx,
                "signalled_used": self._signalled_used}

    def restore_state(self, state: dict, memory=None) -> None:
        """Put a saved queue back; with `memory`, a ready queue is activated again on its
        saved rings and carries on at its saved indices (no reset of next_avail/used)."""
        if state["max_size"] != self.max_size:
            raise VirtqueueError(f"saved queue has max size {state['max_size']}, "
                                 f"this device's has {self.max_size}")
        self.reset()
        self.size, self.ready = state["size"], bool(state["ready"])
        self.desc_table, self.avail_ring = state["desc_table"], state["avail_ring"]
        self.used_ring = state["used_ring"]
        if memory is not None and self.ready:
            problem = self.validate(memory)
            if problem:
                raise VirtqueueError(f"saved queue: {problem}")
            self.activate(memory, bool(state["event_idx"]))
        self.next_avail, self.next_used = _u16(state["next_avail"]), _u16(state["next_used"])
        self._signalled_used = state.get("signalled_used")

    # -- driver → device ----------------------------------------------------------
    def avail_idx(self) -> int:
        return _U16.unpack_from(self._avail, 2)[0]

    def has_available(self) -> bool:
        return self.avail_idx() != self.next_avail

    def pop(self) -> DescriptorChain | None:
        """Take the next available chain, or None when the driver has posted nothing."""
        avail = self.avail_idx()
        pending = _u16(avail - self.next_avail)
        if pending == 0:
            return None
        if pending > self.size:
            raise VirtqueueError(f"available index jumped by {pending} on a queue of {self.size}")
        head = _U16.unpack_from(self._avail, 4 + 2 * (self.next_avail % self.size))[0]
        self.next_avail = _u16(self.next_avail + 1)
        if self.event_idx:  # avail_event: ask for a kick when the driver posts past this
            _U16.pack_into(self._used, 4 + 8 * self.size, self.next_avail)
        return self.parse_chain(head)

    def undo_pop(self) -> None:
        """Put back the chain just popped (e.g. a rate limiter said not yet)."""
        self.next_avail = _u16(self.next_avail - 1)

    def parse_chain(self, head: int) -> DescriptorChain:
        if head >= self.size:
            raise VirtqueueError(f"descriptor index {head} out of range (queue size {self.size})")
        chain = DescriptorChain(head)
        self._walk(chain, self._desc, self.size, head, indirect_ok=True)
        return chain

    def _walk(self, chain: DescriptorChain, table: memoryview, count: int, index: int,
              indirect_ok: bool) -> None:
        mem = self.memory
        contains = mem.contains
        unpack = _DESC.unpack_from
        seen = 0
        while True:
            if index >= count:
                raise VirtqueueError(f"descriptor index {index} out of range ({count} entries)")
            seen += 1
            if seen > count:
                raise VirtqueueError("descriptor chain loops or is longer than its table")
            addr, length, flags, nxt = unpack(table, 16 * index)
            if flags & DESC_F_INDIRECT:
                if not indirect_ok or not chain_is_empty(chain):
                    raise VirtqueueError("nested or mixed indirect descriptor")
                if flags & DESC_F_NEXT or length % 16 or not length:
                    raise VirtqueueError(f"bad indirect descriptor (len {length}, flags {flags:#x})")
                n = length // 16
                if n > MAX_QUEUE_SIZE or not contains(addr, length):
                    raise VirtqueueError(f"indirect table [{addr:#x}, +{length:#x}) invalid")
                try:
                    indirect = mem.view(addr, length)
                except GuestMemoryError as e:
                    raise VirtqueueError(f"indirect table unreadable: {e}") from None
                self._walk(chain, indirect, n, 0, indirect_ok=False)
                return
            if length and not contains(addr, length):
                raise VirtqueueError(f"buffer [{addr:#x}, +{length:#x}) is outside guest memory")
            d = Descriptor(addr, length, bool(flags & DESC_F_WRITE))
            if d.write:
                chain.writable.append(d)
            elif chain.writable:
                raise VirtqueueError("readable descriptor after a writable one")
            else:
                chain.readable.append(d)
            if not flags & DESC_F_NEXT:
                return
            index = nxt

    # -- device → driver ------------------------------------------------------------
    def add_used(self, head: int, written: int) -> None:
        used = self._used
        _USED_ELEM.pack_into(used, 4 + 8 * (self.next_used % self.size), head, written)
        self.next_used = _u16(self.next_used + 1)
        _U16.pack_into(used, 2, self.next_used)  # publish after the element

    def needs_interrupt(self) -> bool:
        """Whether the driver wants an interrupt for what was used since the last one."""
        if not self.event_idx:
            return not (_U16.unpack_from(self._avail, 0)[0] & AVAIL_F_NO_INTERRUPT)
        new, old = self.next_used, self._signalled_used
        self._signalled_used = new
        if old is None:
            return True
        used_event = _U16.unpack_from(self._avail, 4 + 2 * self.size)[0]
        return _u16(new - used_event - 1) < _u16(new - old)

    # -- buffer helpers ---------------------------------------------------------------
    def read_chain(self, chain: DescriptorChain, limit: int | None = None) -> bytes:
        """Concatenate the chain's readable buffers (at most `limit` bytes)."""
        out = bytearray()
        for d in chain.readable:
            take = d.length if limit is None else min(d.length, limit - len(out))
            if take <= 0:
                break
            out += self.memory.view(d.addr, take)
        return bytes(out)

    def write_chain(self, chain: DescriptorChain, data, offset: int = 0) -> int:
        """Scatter `data` into the writable buffers starting `offset` bytes in; returns bytes written."""
        view, done = memoryview(data), 0
        for d in chain.writable:
            if offset >= d.length:
                offset -= d.length
                continue
            take = min(d.length - offset, len(view) - done)
            if take <= 0:
                break
            self.memory.view(d.addr + offset, take)[:] = view[done:done + take]
            done += take
            offset = 0
        return done


def chain_is_empty(chain: DescriptorChain) -> bool:
    return not chain.readable and not chain.writable
