"""What every fuzz target shares: fuzz bytes → structured guest input, the VMM's error
boundary with a witness, an event loop that must settle, and a hostile driver queue.

Import this inside `fuzz.common.instrumented()` (it imports the device code, which must
be instrumented for coverage). Nothing here is a test helper for pytest: the targets
raise `Finding` (or let an exception out) and atheris records the input.
"""

from __future__ import annotations

import collections
import os
import select
import struct
import traceback

import atheris

from nodesvc.testing import CountingIrq, GuestAllocator, GuestDriver
from nodesvc.vmm.memory import GuestMemory
from nodesvc.vmm.virtio import VirtioMmioTransport, VirtqueueError, constants as V
from nodesvc.vmm.virtio.boundary import DeviceLoop, ErrorBoundary

_DESC = struct.Struct("<QIHH")
_USED = struct.Struct("<II")
_U16 = struct.Struct("<H")

MEM_SIZE = 1 << 19             # small: the per-input wipe is a memset of this much
DATA_START, DATA_END = 0x1000, 0x40000    # buffers of the chains an input builds
RING_START = 0x40000           # GuestDriver's rings (its allocator starts here)
_ZERO = bytes(MEM_SIZE)

#: how many loop rounds an input may take to go quiet (fd callbacks + deferred calls)
SETTLE_ROUNDS = 64


class Finding(AssertionError):
    """A property the target checks was broken (the message says which)."""


class Input:
    """atheris.FuzzedDataProvider with the biased choices every target wants."""

    def __init__(self, data: bytes):
        self.fdp = atheris.FuzzedDataProvider(data)

    def left(self) -> int:
        return self.fdp.remaining_bytes()

    def u8(self) -> int:
        return self.fdp.ConsumeIntInRange(0, 0xFF)

    def u16(self) -> int:
        return self.fdp.ConsumeIntInRange(0, 0xFFFF)

    def u32(self) -> int:
        return self.fdp.ConsumeIntInRange(0, 0xFFFFFFFF)

    def u64(self) -> int:
        return self.fdp.ConsumeIntInRange(0, (1 << 64) - 1)

    def int_in(self, lo: int, hi: int) -> int:
        return self.fdp.ConsumeIntInRange(lo, hi)

    def flag(self) -> bool:
        return self.fdp.ConsumeBool()

    def pick(self, seq):
        return seq[self.fdp.ConsumeIntInRange(0, len(seq) - 1)]

    def bytes(self, n: int) -> bytes:
        return self.fdp.ConsumeBytes(n)

    def blob(self, max_len: int) -> bytes:
        return self.fdp.ConsumeBytes(self.int_in(0, max_len))

    def length(self) -> int:
        """A buffer length: mostly small, sometimes a boundary value."""
        k = self.u8()
        if k < 160:
            return self.int_in(0, 256)
        if k < 230:
            return self.int_in(0, 9000)
        return self.pick((0, 1, 15, 16, 511, 512, 4096, 65535, 65536, 65562, 65563,
                          0x7FFFFFFF, 0xFFFFFFFF))

    def addr(self, size: int = MEM_SIZE) -> int:
        """A guest-physical address: mostly inside memory, sometimes just past or anywhere."""
        k = self.u8()
        if k < 200:
            return self.int_in(0, size - 1)
        if k < 230:
            return size - self.int_in(0, 64)
        return self.u64()


class WitnessBoundary(ErrorBoundary):
    """The VMM's ErrorBoundary, remembering every exception it turned into a failure.

    A VirtqueueError is the documented way a device refuses a hostile driver; any other
    exception reaching the boundary is a device bug the boundary merely contained."""

    def __init__(self, name: str):
        super().__init__(name)
        self.unexpected: list[BaseException] = []

    def describe(self, e: BaseException) -> str:
        if not isinstance(e, VirtqueueError):
            self.unexpected.append(e)
        return super().describe(e)

    def check(self) -> None:
        if self.unexpected:
            e, self.unexpected = self.unexpected[0], []
            where = "".join(traceback.format_exception(e)[-6:])   # the device's frames
            raise Finding(f"{self.name}: {type(e).__name__} reached the error boundary: "
                          f"{e}\n{where}") from e


class Loop:
    """The event-loop surface (real epoll, deferred `call_soon`), pumped by the target.

    `settle()` runs it until nothing is ready; an input that keeps it busy for more than
    SETTLE_ROUNDS rounds is a spinning device (a level-triggered fd it never drains, or
    a call_soon chain that never ends)."""

    def __init__(self) -> None:
        self.readers: dict[int, object] = {}
        self.soon: collections.deque = collections.deque()
        self._ep = select.epoll()

    def add_reader(self, fd: int, cb) -> None:
        if fd in self.readers:
            self._ep.modify(fd, select.EPOLLIN)
        else:
            self._ep.register(fd, select.EPOLLIN)
        self.readers[fd] = cb

    def remove_reader(self, fd: int) -> None:
        if self.readers.pop(fd, None) is not None:
            try:
                self._ep.unregister(fd)
            except OSError:
                pass

    def call_soon(self, fn) -> None:
        self.soon.append(fn)

    def run_once(self) -> int:
        ran = 0
        for _ in range(len(self.soon)):     # what is queued now; new calls wait a round
            self.soon.popleft()()
            ran += 1
        for fd, _ in self._ep.poll(0):
            cb = self.readers.get(fd)
            if cb is not None:
                cb(select.EPOLLIN)
                ran += 1
        return ran

    def settle(self, what: str = "device") -> None:
        for _ in range(SETTLE_ROUNDS):
            if not self.run_once():
                return
        raise Finding(f"{what}: event loop still busy after {SETTLE_ROUNDS} rounds "
                      f"({len(self.soon)} deferred calls, fds {sorted(self.readers)})")


def new_memory() -> GuestMemory:
    return GuestMemory(MEM_SIZE)


def wipe(mem: GuestMemory) -> None:
    mem.regions[0].view[:] = _ZERO


class Bump:
    """Allocator for one input's buffers in [DATA_START, DATA_END)."""

    def __init__(self) -> None:
        self.next = DATA_START
        self.hostile = 0         # buffers() made this many hostile buffers

    def alloc(self, n: int, align: int = 8) -> int | None:
        a = (self.next + align - 1) & ~(align - 1)
        if a + n > DATA_END:
            return None
        self.next = a + n
        return a


class Rig:
    """A real device behind the real transport and boundary, as the builder wires them."""

    def __init__(self, name: str, make_device, loop: Loop | None = None):
        self.mem = new_memory()
        self.loop = loop or Loop()
        self.boundary = WitnessBoundary(name)
        self.dloop = DeviceLoop(self.loop, self.boundary)
        self.device = make_device(self.dloop)
        self.irq = CountingIrq()
        self.t = VirtioMmioTransport(self.device, memory=self.mem, irq=self.irq,
                                     event_loop=self.dloop, name=name, boundary=self.boundary)
        self.queues: list[FuzzQueue] = []

    def start(self, inp: Input, sizes=(2, 4, 8, 16, 64, 256), keep: int = 0,
              drop: int = 0) -> bool:
        """Reset the device and bring it up again with fuzz-chosen features and queue
        sizes; False when the device is failed after it (e.g. activation refused)."""
        wipe(self.mem)
        drv = GuestDriver(self.t, self.mem, GuestAllocator(self.mem, RING_START))
        offered = drv.device_features()
        want = (offered & (inp.u64() | keep) & ~drop) | 1 << V.F_VERSION_1
        drv.init(features=want, queue_size=inp.pick(sizes))
        self.loop.settle(self.t.name)
        self.queues = [FuzzQueue(self, q) for q in drv.queues]
        self.features = want
        self.bump = Bump()
        self.check()
        return self.t.failure is None

    def kick(self, index: int) -> None:
        self.t.process_notify(index)

    def check(self) -> None:
        """After every step: nothing but VirtqueueError reached the boundary."""
        self.boundary.check()


class FuzzQueue:
    """The driver side of one queue, hostile on demand: tracks what it posted so that
    what the device hands back can be checked (right heads, lengths within buffers)."""

    def __init__(self, rig: Rig, dq):
        self.rig, self.mem, self.dq = rig, rig.mem, dq
        self.size = dq.size
        self.free = list(range(dq.size))
        self.inflight: dict[int, tuple[list[int], int | None]] = {}   # head -> (slots, cap)
        self.avail_idx = 0
        self.last_used = 0
        self.tainted = False     # a buffer overlaps the rings: the used ring proves nothing

    def _write_desc(self, table: int, slot: int, addr: int, n: int, flags: int, nxt: int):
        _DESC.pack_into(self.mem.regions[0].view, table + 16 * slot, addr & (2**64 - 1),
                        n & 0xFFFFFFFF, flags, nxt)

    def add(self, readable, writable, indirect: bool = False) -> int | None:
        """Post a chain of (gpa, len) buffers; None when the table has no room."""
        bufs = [(a, n, 0) for a, n in readable] + [(a, n, V.DESC_F_WRITE) for a, n in writable]
        if not bufs:
            return None
        cap = sum(n for _, n in writable)
        if indirect:
            table = self.rig.bump.alloc(16 * len(bufs), 16)
            if table is None or not self.free:
                return None
            slots = [self.free.pop()]
            for i, (a, n, f) in enumerate(bufs):
                more = i + 1 < len(bufs)
                self._write_desc(table, i, a, n, f | (V.DESC_F_NEXT if more else 0), i + 1)
            self._write_desc(self.dq.desc, slots[0], table, 16 * len(bufs), V.DESC_F_INDIRECT, 0)
        else:
            if len(bufs) > len(self.free):
                return None
            slots = [self.free.pop() for _ in bufs]
            for i, (a, n, f) in enumerate(bufs):
                more = i + 1 < len(bufs)
                self._write_desc(self.dq.desc, slots[i], a, n, f | (V.DESC_F_NEXT if more else 0),
                                 slots[i + 1] if more else 0)
        for a, n, _ in bufs:
            if n and a + n > RING_START:
                self.taint()
        self.post(slots[0], slots, cap)
        return slots[0]

    def add_raw(self, inp: Input) -> None:
        """Random descriptors in free slots, and their first slot posted."""
        k = min(inp.int_in(1, 4), len(self.free))
        if not k:
            return
        slots = [self.free.pop() for _ in range(k)]
        for s in slots:
            nxt = inp.pick(slots) if inp.flag() else inp.u16()
            self._write_desc(self.dq.desc, s, inp.addr(), inp.length(), inp.int_in(0, 7), nxt)
        self.taint()             # a raw chain may point anywhere, the rings included
        self.post(slots[0], slots, None)

    def taint(self) -> None:
        """A buffer may overlap the rings, any queue's: no used ring proves anything now."""
        for q in self.rig.queues:
            q.tainted = True
        self.tainted = True

    def post(self, head: int, slots: list[int], cap: int | None) -> None:
        mem = self.mem.regions[0].view
        _U16.pack_into(mem, self.dq.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        _U16.pack_into(mem, self.dq.avail + 2, self.avail_idx)
        self.inflight[head] = (slots, cap)

    def hostile_index(self, inp: Input) -> None:
        """The driver lies about its ring: a random head, or an avail index jump."""
        mem = self.mem.regions[0].view
        if inp.flag():
            _U16.pack_into(mem, self.dq.avail + 4 + 2 * (self.avail_idx % self.size), inp.u16())
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        else:
            self.avail_idx = inp.u16()
        _U16.pack_into(mem, self.dq.avail + 2, self.avail_idx)
        self.tainted = True

    def reap(self, max_len=None) -> list[tuple[int, int]]:
        """Used entries since the last call, each checked against what was posted:
        a posted head, at most once, and a length within its writable buffers."""
        mem = self.mem.regions[0].view
        idx = _U16.unpack_from(mem, self.dq.used + 2)[0]
        out = []
        if self.tainted:
            self.last_used = idx
            return out
        if (idx - self.last_used) & 0xFFFF > self.size:
            raise Finding(f"queue {self.dq.index}: used index moved by "
                          f"{(idx - self.last_used) & 0xFFFF} on a queue of {self.size}")
        while self.last_used != idx:
            head, n = _USED.unpack_from(mem, self.dq.used + 4 + 8 * (self.last_used % self.size))
            self.last_used = (self.last_used + 1) & 0xFFFF
            entry = self.inflight.pop(head, None)
            if entry is None:
                raise Finding(f"queue {self.dq.index}: used head {head} was not in flight")
            slots, cap = entry
            if cap is not None and n > cap:
                raise Finding(f"queue {self.dq.index}: used len {n} > the chain's {cap} "
                              f"writable bytes")
            if max_len is not None and n > max_len:
                raise Finding(f"queue {self.dq.index}: used len {n} > {max_len}")
            self.free.extend(slots)
            out.append((head, n))
        return out


def buffers(inp: Input, rig: Rig, total: bytes | int, max_bufs: int = 4,
            hostile: bool = True) -> list[tuple[int, int]]:
    """Guest buffers holding `total` (bytes to place, or a writable size), split at
    fuzz-chosen points; sometimes one of them is hostile (outside memory, zero-length,
    overlapping another)."""
    size = total if isinstance(total, int) else len(total)
    cuts = sorted(inp.int_in(0, size) for _ in range(inp.int_in(0, max_bufs - 1)))
    out, start = [], 0
    for end in cuts + [size]:
        n = end - start
        a = rig.bump.alloc(max(n, 1))
        if a is None:
            break
        if not isinstance(total, int):
            rig.mem.regions[0].view[a:a + n] = total[start:end]
        out.append((a, n))
        start = end
    if hostile and out and inp.u8() >= 224:
        rig.bump.hostile += 1
        i = inp.int_in(0, len(out) - 1)
        out[i] = (inp.addr(), inp.length()) if inp.flag() else (out[i][0], inp.length())
    return out


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
