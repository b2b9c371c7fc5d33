"""The memory file: guest RAM regions one after another (Firecracker's raw layout).

Region k starts at the sum of the sizes before it. Pages that are all zero are not
written (the file is sparse, its size still the full memory), so a 256 MiB guest that
touched 2 MiB costs 2 MiB of disk. A restore maps each region MAP_PRIVATE from the file:
pages load lazily on first touch, writes are copy-on-write, and clones restored from the
same file share the page cache for every page none of them wrote. The file must stay
unchanged for as long as a VM restored from it runs.
"""

from __future__ import annotations

import os

from ..errors import VmmError
from ..kvm import constants as C
from ..kvm.abi import ffi, libc
from ..memory import GuestMemory, Region, layout
from .format import SnapshotMismatch

CHUNK = 1 << 20
_ZERO = bytes(CHUNK)


def regions_of(memory) -> list[list[int]]:
    """[[guest_addr, size, file_offset]…] as the state file records them."""
    out, offset = [], 0
    for r in memory.regions:
        out.append([r.guest_addr, r.size, offset])
        offset += r.size
    return out


def write_memory(memory, fd: int) -> int:
    """Dump every region into `fd` (truncated, sized to the whole memory, fsync'd); returns
    the bytes actually written (zero chunks are holes)."""
    os.ftruncate(fd, 0)
    os.ftruncate(fd, memory.size)
    written, offset = 0, 0
    for r in memory.regions:
        view = r.view
        for pos in range(0, r.size, CHUNK):
            chunk = view[pos:pos + CHUNK]
            if chunk != _ZERO[:len(chunk)]:
                n = 0
                while n < len(chunk):
                    n += os.pwrite(fd, chunk[n:], offset + pos + n)
                written += len(chunk)
        offset += r.size
    os.fsync(fd)
    return written


class FileBackedMemory(GuestMemory):
    """Guest memory mapped privately from a snapshot's memory file (see the module doc).
    The file descriptor is not kept: the mappings hold the file."""

    def __init__(self, size: int, fd: int, regions: list[list[int]]):
        want = [[g, s] for g, s in layout(size)]
        if [[g, s] for g, s, _ in regions] != want:
            raise SnapshotMismatch(f"the snapshot's memory regions {regions} do not match a "
                                   f"{size >> 20} MiB machine's {want}")
        file_size = os.fstat(fd).st_size
        need = max(off + s for _, s, off in regions)
        if file_size < need:   # mapping past its end would SIGBUS the guest later
            raise SnapshotMismatch(f"the memory file is too short: {file_size} bytes, the "
                                   f"snapshot's memory needs {need}")
        self.size = size
        self._maps = []
        self.regions = []
        prot = C.PROT_READ | C.PROT_WRITE
        for gpa, length, offset in regions:
            ptr = libc.mmap(ffi.NULL, length, prot, C.MAP_PRIVATE | C.MAP_NORESERVE, fd, offset)
            if int(ffi.cast("uintptr_t", ptr)) == C.MAP_FAILED:
                err = ffi.errno
                self.close()
                raise VmmError(f"cannot map the memory file ({length >> 20} MiB at offset "
                               f"{offset:#x}): {os.strerror(err)}")
            self._maps.append((ptr, length))
            host = int(ffi.cast("uintptr_t", ptr))
            self.regions.append(Region(gpa, length, host, memoryview(ffi.buffer(ptr, length))))
