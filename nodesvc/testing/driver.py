"""A minimal in-process virtio driver, for tests, conformance checks and benchmarks.

It talks to a `VirtioMmioTransport` through its registers exactly as Linux's
virtio_mmio driver does, and lays out rings and buffers in real guest memory, so
the device code under test cannot tell it from a guest. Kicks run the device
synchronously (no vCPU, no ioeventfd) to measure the device model alone.
"""

from __future__ import annotations

import struct

from nodesvc.vmm.virtio import constants as V
from nodesvc.vmm.virtio.queue import _DESC

_AVAIL_HDR = struct.Struct("<HH")


class CountingIrq:
    gsi = 0

    def __init__(self) -> None:
        self.count = 0

    def trigger(self) -> None:
        self.count += 1


class GuestAllocator:
    """Bump allocator over a guest memory range the test owns."""

    def __init__(self, memory, start: int = 0x10_0000, end: int | None = None):
        self.memory, self.next = memory, start
        self.end = end if end is not None else memory.top_of_low_ram

    def alloc(self, size: int, align: int = 16) -> int:
        addr = (self.next + align - 1) & ~(align - 1)
        if addr + size > self.end:
            raise MemoryError("test guest memory exhausted")
        self.next = addr + size
        return addr


class DriverQueue:
    def __init__(self, drv: "GuestDriver", index: int, size: int):
        self.drv, self.index, self.size = drv, index, size
        a = drv.alloc
        self.desc, self.avail, self.used = a(16 * size, 16), a(6 + 2 * size, 2), a(6 + 8 * size, 4)
        self.free = list(range(size))
        self.avail_idx = 0
        self.last_used = 0

    def program(self) -> None:
        w = self.drv.write_reg
        w(V.QUEUE_SEL, self.index)
        w(V.QUEUE_NUM, self.size)
        for low, addr in ((V.QUEUE_DESC_LOW, self.desc), (V.QUEUE_AVAIL_LOW, self.avail),
                          (V.QUEUE_USED_LOW, self.used)):
            w(low, addr & 0xFFFFFFFF)
            w(low + 4, addr >> 32)
        w(V.QUEUE_READY, 1)

    def add(self, out: list[tuple[int, int]], inb: list[tuple[int, int]]) -> int:
        """Post a chain of (gpa, len) buffers: `out` device-readable, then `inb` writable."""
        mem = self.drv.memory
        bufs = [(a, n, 0) for a, n in out] + [(a, n, V.DESC_F_WRITE) for a, n in inb]
        ids = [self.free.pop() for _ in bufs]
        for k, (addr, n, flags) in enumerate(bufs):
            more = k + 1 < len(bufs)
            _DESC.pack_into(mem.view(self.desc + 16 * ids[k], 16), 0, addr, n,
                            flags | (V.DESC_F_NEXT if more else 0), ids[k + 1] if more else 0)
        self.post(ids[0])
        self._chains = getattr(self, "_chains", {})
        self._chains[ids[0]] = ids
        return ids[0]

    def post(self, head: int) -> None:
        mem = self.drv.memory
        mem.write_u16(self.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        mem.write_u16(self.avail + 2, self.avail_idx)

    def kick(self) -> None:
        self.drv.transport.process_notify(self.index)

    def take_used(self) -> list[tuple[int, int]]:
        mem, out = self.drv.memory, []
        idx = mem.read_u16(self.used + 2)
        while self.last_used != idx:
            slot = self.used + 4 + 8 * (self.last_used % self.size)
            head, n = struct.unpack_from("<II", mem.view(slot, 8))
            self.free.extend(getattr(self, "_chains", {}).pop(head, [head]))
            out.append((head, n))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out


class GuestDriver:
    def __init__(self, transport, memory, allocator: GuestAllocator | None = None):
        self.transport, self.memory = transport, memory
        self.allocator = allocator or GuestAllocator(memory)
        self.queues: list[DriverQueue] = []

    def alloc(self, size: int, align: int = 16) -> int:
        return self.allocator.alloc(size, align)

    def read_reg(self, off: int) -> int:
        return self.transport.read(off, 4)

    def write_reg(self, off: int, value: int) -> None:
        self.transport.write(off, 4, value)

    def device_features(self) -> int:
        feats = 0
        for sel in (0, 1):
            self.write_reg(V.DEVICE_FEATURES_SEL, sel)
            feats |= self.read_reg(V.DEVICE_FEATURES) << (32 * sel)
        return feats

    def init(self, features: int | None = None, queue_size: int | None = None,
             drop: int = 1 << V.F_EVENT_IDX) -> int:
        """Reset, negotiate (all offered features minus `drop` by default), set up queues, DRIVER_OK."""
        assert self.read_reg(V.MAGIC) == V.MMIO_MAGIC and self.read_reg(V.VERSION) == 2
        self.write_reg(V.STATUS, 0)
        self.write_reg(V.STATUS, V.S_ACKNOWLEDGE)
        self.write_reg(V.STATUS, V.S_ACKNOWLEDGE | V.S_DRIVER)
        offered = self.device_features()
        want = offered & ~drop if features is None else features
        for sel in (0, 1):
            self.write_reg(V.DRIVER_FEATURES_SEL, sel)
            self.write_reg(V.DRIVER_FEATURES, (want >> (32 * sel)) & 0xFFFFFFFF)
        status = V.S_ACKNOWLEDGE | V.S_DRIVER | V.S_FEATURES_OK
        self.write_reg(V.STATUS, status)
        if not self.read_reg(V.STATUS) & V.S_FEATURES_OK:
            raise RuntimeError("device refused the features")
        self.queues = []
        for i in range(len(self.transport.queues)):
            self.write_reg(V.QUEUE_SEL, i)
            size = min(self.read_reg(V.QUEUE_NUM_MAX), queue_size or 1 << 16)
            q = DriverQueue(self, i, size)
            q.program()
            self.queues.append(q)
        self.write_reg(V.STATUS, status | V.S_DRIVER_OK)
        return want
