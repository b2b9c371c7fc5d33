"""Boot GDT, empty IDT and identity page tables for entering Linux in long mode.

The 64-bit boot protocol wants flat segments and paging that identity-maps the
kernel, zero page and command line. The descriptors match Firecracker's Linux-boot
GDT; `decode_descriptor` turns one back into the fields of a `kvm_segment`, so the
vCPU code never re-implements the descriptor bit layout.
"""

from __future__ import annotations

from typing import NamedTuple

from . import layout as L
from .abi import ffi, pack

# Access byte (low 8 bits) + flags nibble (bits 12..15) as in Firecracker's gdt_entry():
#   0xa09b: G=1 L=1,      P=1 S=1 type=0xb (code, execute/read, accessed)
#   0xc093: G=1 D/B=1,    P=1 S=1 type=0x3 (data, read/write, accessed)
#   0x808b: G=1,          P=1 S=0 type=0xb (busy 64-bit TSS)
CODE_FLAGS, DATA_FLAGS, TSS_FLAGS = 0xA09B, 0xC093, 0x808B
FLAT_LIMIT = 0xFFFFF             # 20-bit limit; with G=1 it spans 4 GiB

CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR = 1 * 8, 2 * 8, 3 * 8


def gdt_entry(flags: int, base: int, limit: int) -> int:
    """A legacy 8-byte segment descriptor (Intel SDM vol. 3, 3.4.5)."""
    return (((base & 0xFF000000) << 32) | ((flags & 0xF0FF) << 40)
            | ((limit & 0x000F0000) << 32) | ((base & 0x00FFFFFF) << 16)
            | (limit & 0x0000FFFF))


BOOT_GDT = (
    gdt_entry(0, 0, 0),                        # null
    gdt_entry(CODE_FLAGS, 0, FLAT_LIMIT),      # 0x08: 64-bit code
    gdt_entry(DATA_FLAGS, 0, FLAT_LIMIT),      # 0x10: data
    gdt_entry(TSS_FLAGS, 0, FLAT_LIMIT),       # 0x18: TSS
)
GDT_LIMIT = len(BOOT_GDT) * 8 - 1              # for kvm_sregs.gdt.limit
IDT_LIMIT = 8 - 1                              # one (zero) entry: any interrupt -> triple fault


class Descriptor(NamedTuple):
    base: int
    limit: int        # raw 20-bit limit field
    type: int
    dpl: int
    present: int
    db: int
    s: int
    l: int            # noqa: E741 (the architectural name)
    g: int
    avl: int

    @property
    def byte_limit(self) -> int:
        """The limit in bytes (scaled by 4 KiB when G=1), as the CPU caches it."""
        return (self.limit << 12) | 0xFFF if self.g else self.limit

    def kvm_segment_fields(self, index: int) -> dict:
        """Initialiser for `struct kvm_segment` for GDT slot `index`."""
        return {"base": self.base, "limit": self.byte_limit, "selector": index * 8,
                "type": self.type, "present": self.present, "dpl": self.dpl,
                "db": self.db, "s": self.s, "l": self.l, "g": self.g, "avl": self.avl,
                "unusable": 0 if self.present else 1}


def decode_descriptor(entry: int) -> Descriptor:
    bit = lambda n: (entry >> n) & 1  # noqa: E731
    return Descriptor(
        base=((entry >> 16) & 0xFFFFFF) | (((entry >> 56) & 0xFF) << 24),
        limit=(entry & 0xFFFF) | (((entry >> 48) & 0xF) << 16),
        type=(entry >> 40) & 0xF, s=bit(44), dpl=(entry >> 45) & 3, present=bit(47),
        avl=bit(52), l=bit(53), db=bit(54), g=bit(55))


def write_gdt_idt(mem) -> None:
    """The boot GDT at GDT and a zeroed IDT at IDT."""
    mem.write(L.GDT, pack(ffi.new("uint64_t[]", list(BOOT_GDT))))
    mem.write(L.IDT, bytes(IDT_LIMIT + 1))


# Page-table entry bits (SDM vol. 3, 4.5)
PTE_PRESENT, PTE_WRITE, PTE_PS = 1 << 0, 1 << 1, 1 << 7
ENTRIES_PER_TABLE = 512
HUGE_PAGE = 2 << 20


def write_page_tables(mem) -> int:
    """Identity-map [0, 1 GiB) with 2 MiB pages: PML4[0] -> PDPTE[0] -> 512 PDEs.
    Returns the value for CR3. Whole pages are written so stale entries cannot survive."""
    pml4 = ffi.new("uint64_t[]", ENTRIES_PER_TABLE)
    pdpte = ffi.new("uint64_t[]", ENTRIES_PER_TABLE)
    pde = ffi.new("uint64_t[]", ENTRIES_PER_TABLE)
    pml4[0] = L.PDPTE | PTE_PRESENT | PTE_WRITE
    pdpte[0] = L.PDE | PTE_PRESENT | PTE_WRITE
    for i in range(L.IDENTITY_MAP_SIZE // HUGE_PAGE):
        pde[i] = (i * HUGE_PAGE) | PTE_PRESENT | PTE_WRITE | PTE_PS
    mem.write(L.PML4, pack(pml4))
    mem.write(L.PDPTE, pack(pdpte))
    mem.write(L.PDE, pack(pde))
    return L.PML4
