"""Address-range → device dispatch for port I/O and MMIO exits.

Devices implement `BusDevice`: offsets are relative to the range base the device
was inserted at, sizes are 1, 2, 4 or 8 bytes and values are little-endian ints.
"""

from __future__ import annotations

import bisect
import threading
from typing import Protocol


class BusDevice(Protocol):
    def read(self, offset: int, size: int) -> int: ...
    def write(self, offset: int, size: int, value: int) -> None: ...


class BusConflict(ValueError):
    pass


class Bus:
    """Sorted, non-overlapping ranges. Lookups are lock-free (insertions copy-on-write)."""

    def __init__(self, name: str):
        self.name = name
        # One immutable snapshot (bases, entries), replaced whole on insert: a lookup
        # reads it once, so it never pairs one version's bases with another's entries.
        self._table: tuple[tuple[int, ...], tuple[tuple[int, int, BusDevice], ...]] = ((), ())
        self._lock = threading.Lock()
        self.unhandled_reads = 0
        self.unhandled_writes = 0

    def insert(self, base: int, length: int, device: BusDevice) -> None:
        if length <= 0:
            raise BusConflict(f"{self.name}: empty range at {base:#x}")
        with self._lock:
            for b, ln, dev in self._table[1]:
                if base < b + ln and b < base + length:
                    raise BusConflict(
                        f"{self.name}: [{base:#x}, {base + length:#x}) overlaps "
                        f"{type(dev).__name__} at [{b:#x}, {b + ln:#x})")
            entries = tuple(sorted(self._table[1] + ((base, length, device),),
                                   key=lambda e: e[0]))
            self._table = (tuple(e[0] for e in entries), entries)

    def find(self, addr: int) -> tuple[BusDevice, int] | None:
        """Return (device, offset) for an address, or None."""
        bases, entries = self._table
        i = bisect.bisect_right(bases, addr) - 1
        if i >= 0:
            base, length, dev = entries[i]
            if base <= addr < base + length:
                return dev, addr - base
        return None

    def read(self, addr: int, size: int) -> int:
        hit = self.find(addr)
        if hit is None:
            self.unhandled_reads += 1
            return (1 << (8 * size)) - 1  # floating bus reads as all ones
        dev, off = hit
        return dev.read(off, size)

    def write(self, addr: int, size: int, value: int) -> None:
        hit = self.find(addr)
        if hit is None:
            self.unhandled_writes += 1
            return
        dev, off = hit
        dev.write(off, size, value)

    def devices(self) -> list[tuple[int, int, BusDevice]]:
        return list(self._table[1])
