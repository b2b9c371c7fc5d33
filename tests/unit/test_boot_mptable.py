import pytest

from nodesvc.vmm.boot import layout as L
from nodesvc.vmm.boot.abi import ffi, unpack
from nodesvc.vmm.boot.errors import BootError
from nodesvc.vmm.boot.mptable import (
    CPU_BOOTPROCESSOR, CPU_ENABLED, MP_BUS, MP_EXTINT, MP_INTSRC, MP_IOAPIC, MP_LINTSRC,
    MP_NMI, MP_PROCESSOR, mptable_size, write_mptable)
from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.memory import GuestMemory

ENTRY_TYPE = {MP_PROCESSOR: "struct mpc_cpu", MP_BUS: "struct mpc_bus",
              MP_IOAPIC: "struct mpc_ioapic", MP_INTSRC: "struct mpc_intsrc",
              MP_LINTSRC: "struct mpc_lintsrc"}


@pytest.fixture(scope="module")
def mem():
    m = GuestMemory(64 << 20)
    yield m
    m.close()


def parse(mem):
    """Walk the tables the way Linux's mpparse does; returns (mpf, table, entries)."""
    mpf_size = ffi.sizeof("struct mpf_intel")
    mpf = unpack("struct mpf_intel", mem.read(L.MPTABLE_START, mpf_size))
    assert bytes(ffi.buffer(mpf.signature)) == b"_MP_"
    assert sum(mem.read(L.MPTABLE_START, mpf.length * 16)) % 256 == 0
    hdr_size = ffi.sizeof("struct mpc_table")
    table = unpack("struct mpc_table", mem.read(mpf.physptr, hdr_size))
    assert bytes(ffi.buffer(table.signature)) == b"PCMP"
    raw = mem.read(mpf.physptr, table.length)
    assert sum(raw) % 256 == 0
    entries, off = [], hdr_size
    while off < table.length:
        ctype = ENTRY_TYPE[raw[off]]
        entries.append(unpack(ctype, raw, off))
        off += ffi.sizeof(ctype)
    assert off == table.length
    return mpf, table, entries


@pytest.mark.parametrize("ncpu", [1, 2, 32])
def test_tables_and_checksums(mem, ncpu):
    size = write_mptable(mem, ncpu)
    assert size == mptable_size(ncpu)
    mpf, table, entries = parse(mem)
    assert mpf.physptr == L.MPTABLE_START + 16 and mpf.specification == 4
    assert mpf.feature1 == 0                 # 0: a configuration table follows
    assert table.lapic == 0xFEE00000 and table.spec == 4
    assert table.oemcount == len(entries) == ncpu + 1 + 1 + 24 + 2
    assert L.MPTABLE_START + size <= L.HIMEM_START

    cpus = [e for e in entries if e.type == MP_PROCESSOR]
    assert [c.apicid for c in cpus] == list(range(ncpu))
    assert all(c.cpuflag & CPU_ENABLED for c in cpus)
    assert [bool(c.cpuflag & CPU_BOOTPROCESSOR) for c in cpus] == [True] + [False] * (ncpu - 1)

    (bus,) = [e for e in entries if e.type == MP_BUS]
    assert bytes(ffi.buffer(bus.bustype)) == b"ISA   " and bus.busid == 0

    (ioapic,) = [e for e in entries if e.type == MP_IOAPIC]
    assert (ioapic.apicid, ioapic.apicver, ioapic.flags, ioapic.apicaddr) == (
        ncpu, 0x11, 1, 0xFEC00000)

    # Bus IRQ n -> IOAPIC pin n for n in 0..23 (KVM's default GSI routing).
    srcs = [e for e in entries if e.type == MP_INTSRC]
    assert [(s.srcbus, s.srcbusirq, s.dstapic, s.dstirq) for s in srcs] == [
        (0, n, ncpu, n) for n in range(24)]

    lints = [e for e in entries if e.type == MP_LINTSRC]
    assert [(x.irqtype, x.destapic, x.destapiclint) for x in lints] == [
        (MP_EXTINT, 0, 0), (MP_NMI, 0xFF, 1)]


@pytest.mark.parametrize("bad", [0, 33, -1, 254])
def test_vcpu_count_refused(mem, bad):
    with pytest.raises(ConfigError, match="1..32"):
        write_mptable(mem, bad)


def test_needs_ram_under_table():
    m = GuestMemory(0x9F000)                   # RAM ends below 0x9fc00
    try:
        with pytest.raises(BootError, match="does not cover"):
            write_mptable(m, 1)
    finally:
        m.close()
