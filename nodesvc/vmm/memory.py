"""Guest physical memory: anonymous MAP_NORESERVE mappings registered as KVM slots.

Devices and the boot loader use the bounds-checked consumer API (`read`, `write`,
`view`, `read_u*`/`write_u*`, `obj_at`) with guest physical addresses — never
raw host offsets. Above 3 GiB of RAM the 32-bit MMIO gap splits memory in two.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

from .errors import GuestMemoryError, VmmError
from .kvm import constants as C
from .kvm.abi import ffi, libc

MMIO_GAP_START = 0xC000_0000   # 768 MiB gap below 4 GiB (Firecracker ≤ 1.12 layout)
MMIO_GAP_END = 1 << 32


@dataclass
class Region:
    guest_addr: int
    size: int
    host_addr: int
    view: memoryview           # writable bytes of the whole region

    @property
    def end(self) -> int:
        return self.guest_addr + self.size


def layout(size: int) -> list[tuple[int, int]]:
    """(guest_addr, size) RAM ranges for `size` bytes of guest memory."""
    if size <= MMIO_GAP_START:
        return [(0, size)]
    return [(0, MMIO_GAP_START), (MMIO_GAP_END, size - MMIO_GAP_START)]


def _mmap_anon(size: int):
    flags = C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_NORESERVE
    ptr = libc.mmap(ffi.NULL, size, C.PROT_READ | C.PROT_WRITE, flags, -1, 0)
    if int(ffi.cast("uintptr_t", ptr)) == C.MAP_FAILED:
        raise VmmError(f"cannot map {size >> 20} MiB of guest memory: errno {ffi.errno}")
    return ptr


class GuestMemory:
    def __init__(self, size: int):
        if size <= 0 or size % 4096:
            raise GuestMemoryError(f"guest memory size must be a positive multiple of 4 KiB, got {size}")
        self.size = size
        self._maps = []
        self.regions: list[Region] = []
        for gpa, length in layout(size):
            ptr = _mmap_anon(length)
            self._maps.append((ptr, length))
            host = int(ffi.cast("uintptr_t", ptr))
            self.regions.append(Region(gpa, length, host, memoryview(ffi.buffer(ptr, length))))

    # -- lookup -------------------------------------------------------------
    def _locate(self, gpa: int, length: int) -> tuple[Region, int]:
        if length < 0:
            raise GuestMemoryError(f"negative length {length}")
        for r in self.regions:
            if r.guest_addr <= gpa and gpa + length <= r.end:
                return r, gpa - r.guest_addr
        raise GuestMemoryError(f"guest range [{gpa:#x}, {gpa + length:#x}) is outside guest memory")

    def contains(self, gpa: int, length: int = 1) -> bool:
        for r in self.regions:
            if r.guest_addr <= gpa and gpa + length <= r.end:
                return True
        return False

    @property
    def top_of_low_ram(self) -> int:
        return self.regions[0].end

    # -- consumer API ---------------------------------------------------------
    def view(self, gpa: int, length: int) -> memoryview:
        """A writable view of `length` bytes at `gpa` (must not straddle the MMIO gap)."""
        r, off = self._locate(gpa, length)
        return r.view[off:off + length]

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data) -> None:
        self.view(gpa, len(data))[:] = data

    def read_u8(self, gpa: int) -> int:
        return self.view(gpa, 1)[0]

    def read_u16(self, gpa: int) -> int:
        return struct.unpack_from("<H", self.view(gpa, 2))[0]

    def read_u32(self, gpa: int) -> int:
        return struct.unpack_from("<I", self.view(gpa, 4))[0]

    def read_u64(self, gpa: int) -> int:
        return struct.unpack_from("<Q", self.view(gpa, 8))[0]

    def write_u16(self, gpa: int, value: int) -> None:
        struct.pack_into("<H", self.view(gpa, 2), 0, value)

    def write_u32(self, gpa: int, value: int) -> None:
        struct.pack_into("<I", self.view(gpa, 4), 0, value)

    def write_u64(self, gpa: int, value: int) -> None:
        struct.pack_into("<Q", self.view(gpa, 8), 0, value)

    def host_address(self, gpa: int, length: int) -> int:
        r, off = self._locate(gpa, length)
        return r.host_addr + off

    def obj_at(self, gpa: int, ctype: str, ffi_=ffi):
        """A cffi pointer of `ctype` (e.g. "struct boot_params") living at `gpa`."""
        return ffi_.cast(ctype + " *", self.host_address(gpa, ffi_.sizeof(ctype)))

    # -- KVM ------------------------------------------------------------------
    def register(self, vm) -> None:
        for r in self.regions:
            vm.add_memory_region(r.guest_addr, r.size, r.host_addr)

    def resident_bytes(self) -> int:
        """Bytes of guest memory actually backed by host pages (touched by the guest)."""
        page = mmap.PAGESIZE
        total = 0
        for ptr, length in self._maps:
            vec = ffi.new("unsigned char[]", (length + page - 1) // page)
            if libc.mincore(ptr, length, vec) == 0:
                total += sum(b & 1 for b in memoryview(ffi.buffer(vec))) * page
        return total

    def close(self) -> None:
        for r in self.regions:
            r.view.release()
        for ptr, length in self._maps:
            libc.munmap(ptr, length)
        self._maps, self.regions = [], []

