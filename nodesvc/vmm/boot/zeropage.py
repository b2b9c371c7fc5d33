"""The zero page (struct boot_params), kernel command line, e820 map and setup_data.

The 64-bit boot protocol hands the kernel a boot_params in RSI; we build it in a
zeroed cffi struct (optionally seeded with a bzImage's setup_header, as boot.rst
asks), fill in the loader-owned fields and copy it to guest RAM in one write.
"""

from __future__ import annotations

from . import layout as L
from .abi import E820_MAX_ENTRIES_ZEROPAGE, ffi, pack, unpack
from .errors import BootError
from .ram import low_ram_end, ram_ranges

BOOT_FLAG = 0xAA55
HDRS_MAGIC = int.from_bytes(b"HdrS", "little")
LOADER_UNDEFINED = 0xFF          # type_of_loader for loaders without an assigned id
LOADED_HIGH = 1 << 0
CAN_USE_HEAP = 1 << 7
# boot.rst's sample layout puts the end of the setup heap at 0xe000. The real-mode
# setup code never runs with the 64-bit entry; we fill the field for completeness.
HEAP_END = 0xE000
SETUP_RNG_SEED = 9               # asm/setup_data.h
PROTOCOL_SETUP_DATA = 0x0209     # hdr.setup_data exists from boot protocol 2.09


def e820_map(mem) -> list[tuple[int, int, int]]:
    """(addr, size, type) entries: base RAM, the reserved EBDA/BIOS hole (MP table
    lives there), RAM from 1 MiB to the end of low RAM, then RAM above the MMIO gap."""
    low_end = low_ram_end(mem)
    if low_end <= L.HIMEM_START:
        raise BootError(f"guest RAM ({low_end:#x} bytes) must extend beyond 1 MiB")
    entries = [
        (0, L.EBDA_START, L.E820_RAM),
        (L.EBDA_START, L.HIMEM_START - L.EBDA_START, L.E820_RESERVED),
        (L.HIMEM_START, low_end - L.HIMEM_START, L.E820_RAM),
    ]
    entries += [(start, size, L.E820_RAM) for start, size in ram_ranges(mem) if start != 0]
    return entries


def _check_cmdline(cmdline: bytes, kernel_max: int | None) -> None:
    if not isinstance(cmdline, (bytes, bytearray)):
        raise TypeError("cmdline must be bytes")
    if b"\0" in cmdline:
        raise BootError("kernel command line contains a NUL byte")
    limit = L.CMDLINE_MAX - 1
    if len(cmdline) > limit:
        raise BootError(f"kernel command line is {len(cmdline)} bytes; at most {limit} fit")
    if kernel_max and len(cmdline) > kernel_max:
        raise BootError(f"kernel command line is {len(cmdline)} bytes; this kernel "
                        f"accepts at most {kernel_max} (setup_header.cmdline_size)")


def _setup_data_rng(seed: bytes, next_ptr: int) -> bytes:
    """A setup_data node of type SETUP_RNG_SEED: header followed by the seed."""
    node = ffi.new("struct setup_data *")
    node.next, node.type, node.len = next_ptr, SETUP_RNG_SEED, len(seed)
    return pack(node) + bytes(seed)


def write_boot_params(mem, *, cmdline: bytes, initrd: tuple[int, int] | None = None,
                      setup_header: bytes | None = None, rng_seed: bytes | None = None) -> None:
    """Write the command line at CMDLINE, the zero page at ZERO_PAGE and (with
    `rng_seed`) a SETUP_RNG_SEED setup_data at SETUP_DATA, chained from hdr.setup_data."""
    bp = ffi.new("struct boot_params *")
    hdr = bp.hdr
    if setup_header is not None:
        if len(setup_header) > ffi.sizeof("struct setup_header"):
            raise BootError(f"setup_header is {len(setup_header)} bytes; the struct has "
                            f"{ffi.sizeof('struct setup_header')}")
        ffi.memmove(ffi.addressof(bp[0], "hdr"), bytes(setup_header), len(setup_header))
    version = hdr.version if setup_header is not None else None
    kernel_max = hdr.cmdline_size if version is not None and version >= 0x0206 else None
    _check_cmdline(cmdline, kernel_max)

    hdr.boot_flag = BOOT_FLAG
    hdr.header = HDRS_MAGIC
    hdr.type_of_loader = LOADER_UNDEFINED
    hdr.kernel_alignment = L.KERNEL_ALIGNMENT
    hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP
    hdr.heap_end_ptr = HEAP_END - 0x200          # boot.rst: offset of heap end, minus 0x200
    if setup_header is not None:
        hdr.code32_start = L.BZIMAGE_LOAD        # boot.rst: set when not loaded at 1 MiB
    hdr.cmd_line_ptr = L.CMDLINE
    hdr.cmdline_size = len(cmdline)

    if initrd is not None:
        addr, size = initrd
        hdr.ramdisk_image, bp.ext_ramdisk_image = addr & 0xFFFFFFFF, addr >> 32
        hdr.ramdisk_size, bp.ext_ramdisk_size = size & 0xFFFFFFFF, size >> 32

    entries = e820_map(mem)
    if len(entries) > E820_MAX_ENTRIES_ZEROPAGE:
        raise BootError(f"{len(entries)} e820 entries; the zero page holds "
                        f"{E820_MAX_ENTRIES_ZEROPAGE}")
    for i, (addr, size, kind) in enumerate(entries):
        e = bp.e820_table[i]
        e.addr, e.size, e.type = addr, size, kind
    bp.e820_entries = len(entries)

    chain = b""
    if rng_seed is not None:
        if version is not None and version < PROTOCOL_SETUP_DATA:
            raise BootError("this kernel's boot protocol predates setup_data (2.09); "
                            "cannot pass an RNG seed")
        if not rng_seed:
            raise BootError("rng_seed is empty")
        # Linux mixes the seed in at early boot, so the guest need not stall
        # gathering entropy; prepend to any list the header already carries.
        chain = _setup_data_rng(rng_seed, hdr.setup_data)
        if len(chain) > L.SETUP_DATA_MAX:
            raise BootError(f"rng_seed of {len(rng_seed)} bytes does not fit in "
                            f"{L.SETUP_DATA_MAX} bytes at {L.SETUP_DATA:#x}")
        hdr.setup_data = L.SETUP_DATA

    mem.write(L.CMDLINE, bytes(cmdline) + b"\0")
    if chain:
        mem.write(L.SETUP_DATA, chain)
    mem.write(L.ZERO_PAGE, pack(bp))


def read_boot_params(mem):
    """The zero page currently in guest RAM, as an owned `struct boot_params *`."""
    size = ffi.sizeof("struct boot_params")
    return unpack("struct boot_params", mem.read(L.ZERO_PAGE, size))
