"""Load a Linux kernel into guest RAM for the 64-bit boot protocol.

Two formats (Documentation/arch/x86/boot.rst):
- ELF `vmlinux`: every PT_LOAD goes to its physical address (>= 1 MiB); enter at e_entry.
  Preferred on slow (nested, emulated) hosts: nothing to decompress in the guest.
- bzImage: the protected-mode part (after the real-mode setup sectors) goes to 16 MiB;
  enter at load + 0x200 (needs XLF_KERNEL_64). Its setup_header is kept for the zero page.
Everything is validated before the first byte is copied, so a refused image leaves
guest memory untouched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import hostfiles
from . import layout as L
from .abi import ffi, unpack
from .errors import KernelLoadError
from .ram import copy_file_to_guest, fill_zero, in_ram, low_ram_end

# ELF constants (System V gABI, <elf.h>)
ELF_MAGIC = b"\x7fELF"
EI_CLASS, EI_DATA = 4, 5
ELFCLASS64, ELFDATA2LSB = 2, 1
ET_EXEC, EM_X86_64 = 2, 62
PT_LOAD, PT_NOTE = 1, 4
XEN_ELFNOTE_PHYS32_ENTRY = 18          # xen/include/public/elfnote.h: the PVH entry
KERNEL_VIRT_BASE = 0xFFFFFFFF80000000  # __START_KERNEL_map: e_entry may be virtual

# bzImage setup header (bootparam.h); offsets come from the cffi layout
HDRS_MAGIC = b"HdrS"
MIN_PROTOCOL = 0x0206                  # 2.06: cmdline_size exists
LOADED_HIGH = 1 << 0
XLF_KERNEL_64 = 1 << 0
HDR_START = ffi.offsetof("struct boot_params", "hdr")                 # 0x1f1
MAGIC_AT = ffi.offsetof("struct boot_params", "hdr", "header")        # 0x202
JUMP_LEN_AT = ffi.offsetof("struct boot_params", "hdr", "jump") + 1   # 0x201
HDR_END_MAX = HDR_START + ffi.sizeof("struct setup_header")
SECTOR = 512


@dataclass(frozen=True)
class KernelImage:
    entry: int                       # guest physical 64-bit entry point (RIP)
    kind: str                        # "elf" | "bzimage"
    setup_header: bytes | None       # bzImage: file bytes [0x1f1, end of header)
    load_end: int                    # first byte past everything the kernel occupies
    load_start: int = L.HIMEM_START
    pvh_entry: int | None = None     # XEN_ELFNOTE_PHYS32_ENTRY, if the ELF has one
    initrd_addr_max: int = L.INITRD_ADDR_MAX_DEFAULT


def _open(path):
    try:
        return hostfiles.open_file(path)
    except OSError as e:
        raise KernelLoadError(f"cannot open kernel image {path}: {e.strerror}") from None


def _format_of(head: bytes) -> str | None:
    if head[:4] == ELF_MAGIC:
        return "elf"
    if head[MAGIC_AT:MAGIC_AT + 4] == HDRS_MAGIC:
        return "bzimage"
    return None


def detect_kernel_format(path) -> str:
    """"elf" or "bzimage"; KernelLoadError for anything else (for config validation)."""
    with _open(path) as f:
        head = f.read(HDR_END_MAX)
    kind = _format_of(head)
    if kind is None:
        raise KernelLoadError(
            f"kernel image {path} is neither an ELF vmlinux (no \\x7fELF magic) nor a "
            f"bzImage (no 'HdrS' signature at offset {MAGIC_AT:#x})")
    return kind


def load_kernel(mem, path) -> KernelImage:
    kind = detect_kernel_format(path)
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        if kind == "elf":
            return _load_elf(mem, f, path, size)
        return _load_bzimage(mem, f, path, size)


# -- ELF ------------------------------------------------------------------------
def _read_struct(f, ctype: str, offset: int, path):
    f.seek(offset)
    data = f.read(ffi.sizeof(ctype))
    try:
        return unpack(ctype, data)
    except ValueError:
        raise KernelLoadError(f"{path}: truncated ELF file ({ctype} at {offset:#x})") from None


def _check_elf_header(eh, path) -> None:
    ident = bytes(eh.e_ident)
    if ident[EI_CLASS] != ELFCLASS64:
        raise KernelLoadError(f"{path}: not a 64-bit ELF (EI_CLASS={ident[EI_CLASS]})")
    if ident[EI_DATA] != ELFDATA2LSB:
        raise KernelLoadError(f"{path}: not a little-endian ELF (EI_DATA={ident[EI_DATA]})")
    if eh.e_machine != EM_X86_64:
        raise KernelLoadError(f"{path}: ELF machine {eh.e_machine} is not x86_64 ({EM_X86_64})")
    if eh.e_type != ET_EXEC:
        raise KernelLoadError(f"{path}: ELF type {eh.e_type} is not ET_EXEC ({ET_EXEC}); "
                              "a vmlinux is a statically linked executable")
    if eh.e_phnum == 0 or eh.e_phentsize != ffi.sizeof("Elf64_Phdr"):
        raise KernelLoadError(f"{path}: ELF has no usable program headers "
                              f"(e_phnum={eh.e_phnum}, e_phentsize={eh.e_phentsize})")


def _check_segment(mem, ph, path, file_size: int) -> None:
    where = f"{path}: PT_LOAD [{ph.p_paddr:#x}, {ph.p_paddr + ph.p_memsz:#x})"
    if ph.p_filesz > ph.p_memsz:
        raise KernelLoadError(f"{where} has p_filesz > p_memsz")
    if ph.p_offset + ph.p_filesz > file_size:
        raise KernelLoadError(f"{where} extends past the end of the file")
    if ph.p_paddr < L.HIMEM_START:
        raise KernelLoadError(f"{where} is below 1 MiB, where the VMM keeps the boot "
                              "structures; link the kernel at or above 0x100000")
    if not in_ram(mem, ph.p_paddr, ph.p_memsz):
        raise KernelLoadError(f"{where} is outside guest RAM (low RAM ends at "
                              f"{low_ram_end(mem):#x}); give the VM more memory")


def _load_elf(mem, f, path, file_size: int) -> KernelImage:
    eh = _read_struct(f, "Elf64_Ehdr", 0, path)
    _check_elf_header(eh, path)
    phdrs = [_read_struct(f, "Elf64_Phdr", eh.e_phoff + i * eh.e_phentsize, path)
             for i in range(eh.e_phnum)]
    loads = [ph for ph in phdrs if ph.p_type == PT_LOAD and ph.p_memsz > 0]
    if not loads:
        raise KernelLoadError(f"{path}: ELF has no PT_LOAD segments")
    for ph in loads:
        _check_segment(mem, ph, path, file_size)
    entry = _elf_entry(eh.e_entry, loads, path)
    for ph in loads:
        copied = copy_file_to_guest(f, ph.p_offset, mem, ph.p_paddr, ph.p_filesz)
        if copied != ph.p_filesz:
            raise KernelLoadError(f"{path}: file shrank while loading segment at {ph.p_paddr:#x}")
        fill_zero(mem, ph.p_paddr + ph.p_filesz, ph.p_memsz - ph.p_filesz)   # .bss
    return KernelImage(
        entry=entry, kind="elf", setup_header=None,
        load_start=min(ph.p_paddr for ph in loads),
        load_end=max(ph.p_paddr + ph.p_memsz for ph in loads),
        pvh_entry=_pvh_entry(f, phdrs, file_size))


def _elf_entry(e_entry: int, loads, path) -> int:
    if e_entry >= KERNEL_VIRT_BASE:     # virtual: map through the segment holding it
        for ph in loads:
            if ph.p_vaddr <= e_entry < ph.p_vaddr + ph.p_memsz:
                return e_entry - ph.p_vaddr + ph.p_paddr
        raise KernelLoadError(f"{path}: virtual entry point {e_entry:#x} is in no PT_LOAD segment")
    if not any(ph.p_paddr <= e_entry < ph.p_paddr + ph.p_memsz for ph in loads):
        raise KernelLoadError(f"{path}: entry point {e_entry:#x} is outside every PT_LOAD segment")
    return e_entry


def _iter_notes(blob: bytes, align: int):
    """(name, type, desc) of each note in a PT_NOTE segment."""
    nh = ffi.sizeof("Elf64_Nhdr")
    up = lambda n: (n + align - 1) & ~(align - 1)  # noqa: E731
    off = 0
    while off + nh <= len(blob):
        n = unpack("Elf64_Nhdr", blob, off)
        name_at = off + nh
        desc_at = name_at + up(n.n_namesz)
        end = desc_at + up(n.n_descsz)
        if end > len(blob):
            return
        yield (blob[name_at:name_at + n.n_namesz].rstrip(b"\0"), n.n_type,
               blob[desc_at:desc_at + n.n_descsz])
        off = end


def _pvh_entry(f, phdrs, file_size: int) -> int | None:
    for ph in phdrs:
        if ph.p_type != PT_NOTE or ph.p_offset + ph.p_filesz > file_size:
            continue
        f.seek(ph.p_offset)
        blob = f.read(ph.p_filesz)
        for name, ntype, desc in _iter_notes(blob, 8 if ph.p_align == 8 else 4):
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY and len(desc) in (4, 8):
                return int.from_bytes(desc, "little")
    return None


# -- bzImage --------------------------------------------------------------------
def _load_bzimage(mem, f, path, file_size: int) -> KernelImage:
    f.seek(0)
    head = f.read(HDR_END_MAX)
    try:
        hdr = unpack("struct setup_header", head, HDR_START)
    except ValueError:
        raise KernelLoadError(f"{path}: truncated bzImage setup header") from None
    v = hdr.version
    if v < MIN_PROTOCOL:
        raise KernelLoadError(f"{path}: bzImage boot protocol {v >> 8}.{v & 0xff:02d} "
                              "is older than 2.06")
    if not hdr.loadflags & LOADED_HIGH:
        raise KernelLoadError(f"{path}: zImage (LOADED_HIGH clear); only bzImage is supported")
    if not hdr.xloadflags & XLF_KERNEL_64:
        raise KernelLoadError(f"{path}: bzImage has no 64-bit entry point "
                              "(XLF_KERNEL_64 not set in xloadflags)")
    pm_offset = ((hdr.setup_sects or 4) + 1) * SECTOR   # 0 setup_sects means 4
    pm_size = file_size - pm_offset
    if pm_size <= 0:
        raise KernelLoadError(f"{path}: bzImage has no protected-mode part after "
                              f"{pm_offset} bytes of setup code")
    # init_size (2.10+): linear memory the kernel needs at its load address to start.
    footprint = max(pm_size, hdr.init_size if v >= 0x020A else 0)
    if not in_ram(mem, L.BZIMAGE_LOAD, footprint):
        raise KernelLoadError(
            f"{path}: the kernel needs RAM [{L.BZIMAGE_LOAD:#x}, {L.BZIMAGE_LOAD + footprint:#x}) "
            f"but low RAM ends at {low_ram_end(mem):#x}; give the VM more memory")
    if copy_file_to_guest(f, pm_offset, mem, L.BZIMAGE_LOAD, pm_size) != pm_size:
        raise KernelLoadError(f"{path}: file shrank while loading")
    # The header's length is encoded by its jump instruction: it ends at 0x202 + byte[0x201].
    hdr_end = min(max(MAGIC_AT + head[JUMP_LEN_AT], MAGIC_AT + 4), HDR_END_MAX)
    return KernelImage(
        entry=L.BZIMAGE_LOAD + L.BZIMAGE_ENTRY_64, kind="bzimage",
        setup_header=bytes(head[HDR_START:hdr_end]),
        load_start=L.BZIMAGE_LOAD, load_end=L.BZIMAGE_LOAD + footprint,
        initrd_addr_max=hdr.initrd_addr_max or L.INITRD_ADDR_MAX_DEFAULT)
