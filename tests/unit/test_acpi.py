"""ACPI tables as a guest finds them: RSDP scan, checksums, lengths, MADT per vCPU count,
placement beside the other boot data, and the DSDT's AML decoded by ACPICA's `iasl -d`."""

import re
import shutil
import struct
import subprocess

import pytest

from nodesvc.vmm.boot import acpi, gdt, layout as L, mptable, zeropage
from nodesvc.vmm.boot.errors import BootError
from nodesvc.vmm.memory import GuestMemory

MMIO = [(0xD0000000 + n * 0x1000, 0x1000, 5 + n) for n in range(3)]
INSTALL_HINT = ("iasl (Debian package acpica-tools) is missing; install it with "
                "`sudo scripts/install-sysdeps` (or `apt-get install acpica-tools`)")


@pytest.fixture
def mem():
    m = GuestMemory(64 << 20)
    yield m
    m.close()


@pytest.fixture(scope="module")
def iasl():
    path = shutil.which("iasl")
    if path is None:
        pytest.fail(INSTALL_HINT)
    return path


def header(table: bytes):
    sig, length, rev, _csum, oem, table_id = struct.unpack_from("<4sIBB6s8s", table)
    return sig, length, rev, oem, table_id


def find_rsdp(mem) -> int:
    """Linux's acpi_find_root_pointer without an EBDA: 16-byte steps over [0xE0000, 1 MiB)."""
    for addr in range(0xE0000, 0x100000, 16):
        raw = mem.read(addr, 36)
        if raw[:8] == b"RSD PTR " and sum(raw[:20]) % 256 == 0:
            return addr
    raise AssertionError("no RSDP in the BIOS area")


def read_table(mem, addr: int) -> bytes:
    length = struct.unpack_from("<I", mem.read(addr, 8), 4)[0]
    return mem.read(addr, length)


def walk(mem):
    """RSDP -> XSDT -> tables (and FADT -> DSDT), every checksum checked; by signature."""
    rsdp_addr = find_rsdp(mem)
    rsdp = mem.read(rsdp_addr, 36)
    assert rsdp[15] == 2                                   # revision 2: XSDT present
    assert struct.unpack_from("<I", rsdp, 20)[0] == 36      # length
    assert sum(rsdp) % 256 == 0                            # extended checksum
    xsdt = read_table(mem, struct.unpack_from("<Q", rsdp, 24)[0])
    tables = {b"XSDT": xsdt}
    for (addr,) in struct.iter_unpack("<Q", xsdt[36:]):
        t = read_table(mem, addr)
        tables[t[:4]] = t
    tables[b"DSDT"] = read_table(mem, struct.unpack_from("<Q", tables[b"FACP"], 140)[0])
    for sig, t in tables.items():
        assert sum(t) % 256 == 0, f"{sig} checksum"
        assert header(t)[1] == len(t) and header(t)[3] == acpi.OEM_ID
    return rsdp_addr, tables


def madt_entries(madt: bytes):
    out, off = [], 44
    while off < len(madt):
        kind, length = madt[off], madt[off + 1]
        assert length >= 2 and off + length <= len(madt)
        out.append((kind, madt[off:off + length]))
        off += length
    assert off == len(madt)
    return out


# -- structure -----------------------------------------------------------------------
def test_rsdp_in_bios_area_and_tables_reachable(mem):
    rsdp = acpi.write_acpi_tables(mem, 2, MMIO)
    found, tables = walk(mem)
    assert rsdp == found == acpi.RSDP_ADDR
    assert set(tables) == {b"XSDT", b"FACP", b"APIC", b"DSDT"}
    revisions = {sig: header(t)[2] for sig, t in tables.items()}
    assert revisions == {b"XSDT": 1, b"FACP": 6, b"APIC": 6, b"DSDT": 2}
    # RSDP revision 2 without an RSDT: guests must use the XSDT
    assert struct.unpack_from("<I", mem.read(rsdp, 36), 16)[0] == 0


def test_fadt_is_hardware_reduced_with_no_pm_blocks(mem):
    acpi.write_acpi_tables(mem, 1, MMIO)
    fadt = walk(mem)[1][b"FACP"]
    assert len(fadt) == 276 and fadt[131] == 5               # FADT 6.5
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags & acpi.FADT_HW_REDUCED_ACPI
    iapc = struct.unpack_from("<H", fadt, 109)[0]
    assert iapc & acpi.IAPC_VGA_NOT_PRESENT and iapc & acpi.IAPC_8042
    assert not iapc & acpi.IAPC_LEGACY_DEVICES
    # SCI_INT, SMI_CMD and every PM1/PM2/PM_TMR/GPE block (32-bit and X_ forms) are zero
    assert fadt[46:56] == bytes(10) and fadt[56:96] == bytes(40)
    assert fadt[148:244] == bytes(96)
    dsdt32 = struct.unpack_from("<I", fadt, 40)[0]
    assert dsdt32 == struct.unpack_from("<Q", fadt, 140)[0] != 0
    # reset register: 0xFE to I/O port 0x64 (the i8042 reset reboot=k uses too)
    assert flags & acpi.FADT_RESET_REG_SUP
    assert fadt[116] == acpi.GAS_SYSTEM_IO and struct.unpack_from("<Q", fadt, 120)[0] == 0x64
    assert fadt[128] == 0xFE


def test_fadt_without_i8042():
    fadt = acpi.build_fadt(0xE0030, i8042=False)
    assert sum(fadt) % 256 == 0
    assert not struct.unpack_from("<H", fadt, 109)[0] & acpi.IAPC_8042
    assert not struct.unpack_from("<I", fadt, 112)[0] & acpi.FADT_RESET_REG_SUP


@pytest.mark.parametrize("ncpu", [1, 2, 32])
def test_madt_one_local_apic_per_vcpu(mem, ncpu):
    acpi.write_acpi_tables(mem, ncpu, MMIO)
    madt = walk(mem)[1][b"APIC"]
    lapic_addr, flags = struct.unpack_from("<II", madt, 36)
    assert lapic_addr == L.LAPIC and flags & acpi.MADT_PCAT_COMPAT
    entries = madt_entries(madt)
    assert len(madt) == 44 + 8 * ncpu + 12 + 10 + 6
    lapics = [struct.unpack("<BBBBI", e) for k, e in entries if k == acpi.MADT_LAPIC]
    assert [(uid, apic_id) for _, _, uid, apic_id, _ in lapics] == [(i, i) for i in range(ncpu)]
    assert all(f & acpi.LAPIC_ENABLED for *_, f in lapics)
    (ioapic,) = [struct.unpack("<BBBBII", e) for k, e in entries if k == acpi.MADT_IOAPIC]
    assert ioapic[2] == ncpu and ioapic[4:] == (L.IOAPIC, 0)   # id as in the MP table; GSI base 0
    (iso,) = [struct.unpack("<BBBBIH", e) for k, e in entries if k == acpi.MADT_ISO]
    assert iso[2:] == (0, 0, 0, 0b0101)                     # ISA IRQ 0 -> GSI 0, edge, high
    (nmi,) = [struct.unpack("<BBBHB", e) for k, e in entries if k == acpi.MADT_LAPIC_NMI]
    assert nmi[2] == 0xFF and nmi[4] == 1                   # LINT1 of every CPU


@pytest.mark.parametrize("bad", [0, 33, "2"])
def test_vcpu_count_is_checked(mem, bad):
    with pytest.raises(BootError):
        acpi.write_acpi_tables(mem, bad, MMIO)


def test_irq_outside_ioapic_is_refused(mem):
    with pytest.raises(BootError, match="IRQ 24"):
        acpi.write_acpi_tables(mem, 1, [(0xD0000000, 0x1000, 24)])
    assert mem.read(acpi.RSDP_ADDR, 8) == bytes(8)          # nothing written


# -- placement -------------------------------------------------------------------------
def test_tables_share_guest_ram_with_the_other_boot_data(mem):
    """Every writer of boot data, in both orders: nobody's bytes change."""
    def others():
        zeropage.write_boot_params(mem, cmdline=b"console=ttyS0 " * 40, rng_seed=bytes(range(32)))
        mptable.write_mptable(mem, L.MAX_VCPUS)
        gdt.write_gdt_idt(mem)
        gdt.write_page_tables(mem)

    def snapshot():
        return mem.read(0, L.HIMEM_START)

    others()
    before = snapshot()
    acpi.write_acpi_tables(mem, L.MAX_VCPUS, MMIO * 6)       # 18 devices, 32 vCPUs
    after = snapshot()
    changed = [i for i in range(len(before)) if before[i] != after[i]]
    assert changed and min(changed) >= acpi.RSDP_ADDR
    others()
    assert snapshot() == after
    _, tables = walk(mem)
    # all of it in the e820-reserved hole below 1 MiB, which Linux leaves alone
    end = max(a + len(t) for a, t in acpi.build_acpi_tables(L.MAX_VCPUS, MMIO * 6))
    reserved = [(a, a + n) for a, n, kind in zeropage.e820_map(mem) if kind == L.E820_RESERVED]
    assert any(lo <= acpi.RSDP_ADDR and end <= hi for lo, hi in reserved)
    assert end <= acpi.TABLES_END


# -- iasl ------------------------------------------------------------------------------
def disassemble(iasl, tmp_path, name: str, table: bytes) -> str:
    path = tmp_path / f"{name}.dat"
    path.write_bytes(table)
    run = subprocess.run([iasl, "-d", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Incorrect checksum" not in run.stdout + run.stderr
    return (tmp_path / f"{name}.dsl").read_text()


def dsl_devices(dsl: str) -> dict:
    """Device name -> its _HID, _UID, memory windows, I/O ports and interrupts."""
    out = {}
    for block in re.split(r"\n\s*Device \(", dsl)[1:]:
        dev = block[:block.index(")")]
        hid = re.search(r'Name \(_HID, (?:EisaId \()?"([^"]+)"', block).group(1)
        uid = re.search(r"Name \(_UID, (\w+)\)", block).group(1)
        mem = [(int(b, 16), int(n, 16)) for b, n in re.findall(
            r"Memory32Fixed \(ReadWrite,\s+0x(\w+),\s+// Address Base\s+0x(\w+)", block)]
        io = [int(p, 16) for p in re.findall(r"IO \(Decode16,\s+0x(\w+),", block)]
        irqs = [int(i, 16) for i in re.findall(
            r"Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)"
            r"\s+\{\s+0x(\w+),", block)]
        out[dev] = {"hid": hid, "uid": uid, "mem": mem, "io": io, "irqs": irqs}
    return out


def test_iasl_decodes_the_dsdt_to_the_devices_we_placed(iasl, tmp_path, mem):
    acpi.write_acpi_tables(mem, 2, MMIO)
    dsl = disassemble(iasl, tmp_path, "dsdt", walk(mem)[1][b"DSDT"])
    assert 'DefinitionBlock ("", "DSDT", 2, "NODESV", "NSVMDSDT"' in dsl
    assert "Scope (\\_SB)" in dsl
    devices = dsl_devices(dsl)
    assert devices["COM1"] == {"hid": "PNP0501", "uid": "Zero", "mem": [], "io": [0x3F8],
                               "irqs": [4]}
    assert devices["PS2"] == {"hid": "PNP0303", "uid": "Zero", "mem": [], "io": [0x60, 0x64],
                              "irqs": [1]}
    virtio = {k: v for k, v in devices.items() if v["hid"] == "LNRO0005"}
    assert sorted(virtio) == ["V000", "V001", "V002"]
    assert [(v["mem"][0], v["irqs"][0]) for _, v in sorted(virtio.items())] == \
        [((base, size), irq) for base, size, irq in MMIO]
    assert dsl.count("Name (_CCA, One)") == 3


def test_iasl_dsdt_with_many_devices_and_no_legacy(iasl, tmp_path):
    mmio = [(0xD0000000 + n * 0x1000, 0x1000, 5 + n) for n in range(19)]   # the VMM's maximum
    dsdt = acpi.build_dsdt(mmio, serial=None, i8042=False)
    devices = dsl_devices(disassemble(iasl, tmp_path, "dsdt", dsdt))
    assert sorted(devices) == [f"V{n:03X}" for n in range(19)]
    assert devices["V012"]["irqs"] == [23] and devices["V012"]["uid"] == "0x12"


@pytest.mark.parametrize("ncpu", [1, 32])
def test_iasl_decodes_madt_and_fadt(iasl, tmp_path, mem, ncpu):
    acpi.write_acpi_tables(mem, ncpu, MMIO)
    tables = walk(mem)[1]
    madt = disassemble(iasl, tmp_path, "apic", tables[b"APIC"])
    assert madt.count("[Processor Local APIC]") == ncpu
    ids = re.findall(r"Local Apic ID : (\w+)", madt)
    assert [int(i, 16) for i in ids] == list(range(ncpu))
    assert "[I/O APIC]" in madt and "Address : FEC00000" in madt
    fadt = disassemble(iasl, tmp_path, "facp", tables[b"FACP"])
    assert re.search(r"Hardware Reduced \(V5\) : 1", fadt)
    assert re.search(r"8042 Present on ports 60/64 \(V2\) : 1", fadt)
    assert re.search(r"VGA Not Present \(V4\) : 1", fadt)
