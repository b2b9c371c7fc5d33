import struct

import pytest

from nodesvc.vmm.boot import layout as L
from nodesvc.vmm.boot.gdt import (
    BOOT_GDT, GDT_LIMIT, IDT_LIMIT, TSS_SELECTOR, decode_descriptor, gdt_entry,
    write_gdt_idt, write_page_tables)
from nodesvc.vmm.memory import GuestMemory


@pytest.fixture
def mem():
    m = GuestMemory(16 << 20)
    yield m
    m.close()


def test_descriptors_match_firecracker():
    # The values Firecracker's regs.rs tests read back from guest memory.
    assert BOOT_GDT == (0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x008F8B000000FFFF)
    assert GDT_LIMIT == 31 and IDT_LIMIT == 7 and TSS_SELECTOR == 0x18


def test_decode_code_segment():
    d = decode_descriptor(gdt_entry(0xA09B, 0x100000, 0xFFFFF))
    assert (d.g, d.db, d.l, d.avl, d.present, d.dpl, d.s, d.type) == (1, 0, 1, 0, 1, 0, 1, 0xB)
    assert (d.base, d.limit, d.byte_limit) == (0x100000, 0xFFFFF, 0xFFFFFFFF)


def test_decode_roundtrip_and_kvm_fields():
    for flags in (0xA09B, 0xC093, 0x808B, 0x40F3):
        for base, limit in ((0, 0xFFFFF), (0x12345678, 0xABCDE), (0xFF000000, 0x67)):
            d = decode_descriptor(gdt_entry(flags, base, limit))
            assert (d.base, d.limit) == (base, limit)
            assert d.type == flags & 0xF and d.s == (flags >> 4) & 1
            assert d.dpl == (flags >> 5) & 3 and d.present == (flags >> 7) & 1
            assert (d.avl, d.l, d.db, d.g) == tuple((flags >> b) & 1 for b in (12, 13, 14, 15))
    tss = decode_descriptor(BOOT_GDT[3]).kvm_segment_fields(3)
    assert tss["selector"] == 0x18 and tss["type"] == 0xB and tss["s"] == 0
    assert tss["unusable"] == 0 and tss["limit"] == 0xFFFFFFFF
    assert decode_descriptor(BOOT_GDT[0]).kvm_segment_fields(0)["unusable"] == 1


def test_kvm_segment_fields_fit_the_kvm_struct():
    from nodesvc.vmm.kvm import abi
    seg = abi.ffi.new("struct kvm_segment *", decode_descriptor(BOOT_GDT[1]).kvm_segment_fields(1))
    assert (seg.selector, seg.l, seg.present) == (8, 1, 1)


def test_write_gdt_idt(mem):
    mem.write(L.IDT, b"\xff" * 8)
    write_gdt_idt(mem)
    assert struct.unpack("<4Q", mem.read(L.GDT, 32)) == BOOT_GDT
    assert mem.read(L.IDT, 8) == bytes(8)
    assert L.GDT + GDT_LIMIT < L.IDT


def test_identity_page_tables(mem):
    mem.write(L.PML4 + 8, b"\xff" * 8)               # stale entry must be cleared
    assert write_page_tables(mem) == 0x9000
    pml4 = struct.unpack("<512Q", mem.read(L.PML4, 4096))
    pdpte = struct.unpack("<512Q", mem.read(L.PDPTE, 4096))
    pde = struct.unpack("<512Q", mem.read(L.PDE, 4096))
    assert pml4[0] == 0xA003 and not any(pml4[1:])
    assert pdpte[0] == 0xB003 and not any(pdpte[1:])
    assert pde == tuple((i << 21) | 0x83 for i in range(512))
    # The boot structures stay below the page tables and clear of each other.
    assert L.ZERO_PAGE + 4096 <= L.BOOT_STACK < L.PML4 < L.PDPTE < L.PDE < L.CMDLINE
