"""Place an initrd/initramfs in guest RAM.

Like Firecracker and QEMU, the initrd goes as high as possible in low RAM (page
aligned), so the kernel's early allocations below it stay free; it must end below
the kernel's initrd_addr_max and must not overlap the kernel image.
"""

from __future__ import annotations

import os

from .. import hostfiles
from . import layout as L
from .errors import InitrdLoadError
from .ram import copy_file_to_guest, low_ram_end


def _page_up(x: int) -> int:
    return (x + L.PAGE_SIZE - 1) & ~(L.PAGE_SIZE - 1)


def initrd_placement(mem, size: int, kernel_end: int,
                     initrd_addr_max: int = L.INITRD_ADDR_MAX_DEFAULT) -> int:
    """Guest address for an initrd of `size` bytes (see module doc); InitrdLoadError if none."""
    if size <= 0:
        raise InitrdLoadError("initrd is empty")
    # initrd_addr_max is the highest byte the initrd may occupy (boot.rst), hence +1.
    top = min(low_ram_end(mem), initrd_addr_max + 1)
    floor = max(_page_up(kernel_end), L.HIMEM_START)
    addr = (top - size) & ~(L.PAGE_SIZE - 1)
    if top - size < floor or addr < floor:
        raise InitrdLoadError(
            f"initrd of {size} bytes does not fit between the kernel end {floor:#x} and "
            f"{top:#x} (top of low RAM / initrd_addr_max); give the VM more memory")
    return addr


def load_initrd(mem, path, kernel_end: int,
                initrd_addr_max: int = L.INITRD_ADDR_MAX_DEFAULT) -> tuple[int, int]:
    """Copy the initrd at `path` into guest RAM; returns (guest_addr, size)."""
    try:
        f = hostfiles.open_file(path)
    except OSError as e:
        raise InitrdLoadError(f"cannot open initrd {path}: {e.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        try:
            addr = initrd_placement(mem, size, kernel_end, initrd_addr_max)
        except InitrdLoadError as e:
            raise InitrdLoadError(f"{path}: {e}") from None
        if copy_file_to_guest(f, 0, mem, addr, size) != size:
            raise InitrdLoadError(f"{path}: file shrank while loading")
    return addr, size
