"""ACPI tables for ACPI-only guests: RSDP, XSDT, FADT, MADT and a DSDT (ACPI 6.5).

What a kernel without MP-table parsing and without `virtio_mmio.device=` needs to
find its hardware: the vCPUs and the IOAPIC (MADT), the virtio-mmio windows ("LNRO0005",
memory window + interrupt) and the legacy UART and i8042 (DSDT). Firecracker writes
these (plus an MCFG for its PCI) and keeps its MP table beside them; so do we. The
platform is hardware-reduced ACPI: no PM1/GPE register blocks, no SCI, no FACS.

Placement: the RSDP goes at 0xE0000, where Linux scans the BIOS area ([0xE0000,
0x100000) on 16-byte boundaries) when boot_params.acpi_rsdp_addr is 0, and the tables
follow it. That range lies in the e820-reserved [EBDA_START, 1 MiB) hole, above the MP
table (at 0x9FC00, < 1 KiB) and clear of everything else the VMM writes below 1 MiB
(GDT 0x500, zero page 0x7000, stack, page tables 0x9000-0xBFFF, cmdline 0x20000,
setup_data 0x21000).
"""

from __future__ import annotations

import struct

from . import aml
from . import layout as L
from .errors import BootError
from .ram import in_ram

RSDP_ADDR = 0xE0000              # Linux: ACPI_HI_RSDP_WINDOW_BASE, scanned without EBDA
TABLES_END = L.HIMEM_START       # the scanned window (and the reserved hole) ends here
TABLE_ALIGN = 16

OEM_ID = b"NODESV"               # 6 characters
OEM_REVISION = 1
CREATOR_ID = b"NSVC"
CREATOR_REVISION = 1
HYPERVISOR_VENDOR_ID = b"NODESVC "

HEADER_LEN = 36                  # every SDT starts with the same 36-byte header
RSDP_LEN = 36                    # ACPI 2.0+ RSDP
RSDP_V1_LEN = 20                 # the part the first checksum covers
FADT_LEN = 276                   # FADT revision 6 (through Hypervisor Vendor Identity)
FADT_REVISION, FADT_MINOR = 6, 5
MADT_REVISION = 6
XSDT_REVISION = 1
DSDT_REVISION = 2                # >= 2: AML integers are 64-bit

# FADT Flags (5.2.9, table 5.10)
FADT_RESET_REG_SUP = 1 << 10
FADT_PWR_BUTTON = 1 << 4         # set: no fixed-feature power button
FADT_SLP_BUTTON = 1 << 5         # set: no fixed-feature sleep button
FADT_HW_REDUCED_ACPI = 1 << 20
# IA-PC boot architecture flags (5.2.9.3)
IAPC_LEGACY_DEVICES = 1 << 0
IAPC_8042 = 1 << 1
IAPC_VGA_NOT_PRESENT = 1 << 2
IAPC_MSI_NOT_PRESENT = 1 << 3
IAPC_CMOS_RTC_NOT_PRESENT = 1 << 5
# Generic Address Structure, address space ids
GAS_SYSTEM_IO = 1
GAS_ACCESS_BYTE = 1
I8042_COMMAND_PORT, I8042_DATA_PORT, I8042_RESET = 0x64, 0x60, 0xFE
I8042_IRQ = 1

# MADT (5.2.12)
MADT_PCAT_COMPAT = 1 << 0        # KVM's irqchip includes the dual 8259
MADT_LAPIC, MADT_IOAPIC, MADT_ISO, MADT_LAPIC_NMI = 0, 1, 2, 4
LAPIC_ENABLED = 1 << 0
MPS_INTI_CONFORMS = 0            # polarity/trigger "conform to the bus" (ISA: edge, high)
MPS_EDGE_HIGH = 0b0101           # bits 1-0 polarity 01 = active high, 3-2 trigger 01 = edge
ACPI_ALL_PROCESSORS = 0xFF
NMI_LINT = 1

SERIAL_PORT, SERIAL_PORT_LEN, SERIAL_IRQ = 0x3F8, 8, 4
VIRTIO_MMIO_HID = "LNRO0005"     # what drivers/virtio/virtio_mmio.c matches under ACPI


def checksum(data: bytes) -> int:
    """The byte that makes the 8-bit sum of `data` plus itself zero."""
    return -sum(data) & 0xFF


def sdt(signature: bytes, revision: int, body: bytes, table_id: bytes) -> bytes:
    """A System Description Table: the 36-byte header, `body`, checksum filled in."""
    if len(signature) != 4 or len(table_id) > 8:
        raise BootError(f"bad ACPI table signature {signature!r} / id {table_id!r}")
    length = HEADER_LEN + len(body)
    header = struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID,
                         table_id.ljust(8, b" "), OEM_REVISION, CREATOR_ID, CREATOR_REVISION)
    table = bytearray(header + body)
    table[9] = checksum(table)
    return bytes(table)


def _gas(space: int, address: int, *, bit_width: int = 8, access: int = GAS_ACCESS_BYTE) -> bytes:
    return struct.pack("<BBBBQ", space, bit_width, 0, access, address)


_NO_GAS = bytes(12)


# -- the tables ------------------------------------------------------------------
def build_rsdp(xsdt_addr: int) -> bytes:
    """RSDP revision 2: no RSDT (XSDT only), both checksums."""
    rsdp = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, OEM_ID, 2, 0, RSDP_LEN,
                                 xsdt_addr, 0, bytes(3)))
    rsdp[8] = checksum(rsdp[:RSDP_V1_LEN])
    rsdp[32] = checksum(rsdp)
    return bytes(rsdp)


def build_xsdt(table_addrs: list[int]) -> bytes:
    return sdt(b"XSDT", XSDT_REVISION, b"".join(struct.pack("<Q", a) for a in table_addrs),
               b"NSVMXSDT")


def build_fadt(dsdt_addr: int, *, i8042: bool = True) -> bytes:
    """Hardware-reduced FADT: flags, boot-architecture flags, the DSDT pointer and
    (with an i8042) a reset register; every PM/GPE block is zero."""
    iapc = IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT
    flags = FADT_HW_REDUCED_ACPI | FADT_PWR_BUTTON | FADT_SLP_BUTTON
    reset_reg, reset_value = _NO_GAS, 0
    if i8042:
        # Linux reads IAPC_8042 to decide whether to probe the controller; the reset
        # register (0xFE to port 0x64) is the same reset reboot=k performs.
        iapc |= IAPC_8042
        flags |= FADT_RESET_REG_SUP
        reset_reg, reset_value = _gas(GAS_SYSTEM_IO, I8042_COMMAND_PORT), I8042_RESET
    body = bytearray(FADT_LEN - HEADER_LEN)

    def put(offset: int, fmt: str, *values) -> None:
        struct.pack_into("<" + fmt, body, offset - HEADER_LEN, *values)

    put(40, "I", dsdt_addr)                  # DSDT (32-bit; tables live below 1 MiB)
    put(109, "H", iapc)                      # IAPC_BOOT_ARCH
    put(112, "I", flags)                     # Flags
    put(116, "12sB", reset_reg, reset_value)  # RESET_REG, RESET_VALUE
    put(131, "B", FADT_MINOR)                # FADT Minor Version
    put(140, "Q", dsdt_addr)                 # X_DSDT
    put(268, "8s", HYPERVISOR_VENDOR_ID)     # Hypervisor Vendor Identity
    return sdt(b"FACP", FADT_REVISION, bytes(body), b"NSVMFACP")


def ioapic_id(vcpu_count: int) -> int:
    """The IOAPIC's id: the first APIC id after the vCPUs', as in our MP table."""
    return vcpu_count


def madt_entries(vcpu_count: int) -> list[bytes]:
    """One enabled Local APIC per vCPU (UID = APIC id = index), the IOAPIC at GSI base
    0, the ISA timer override, and LINT1 = NMI on every CPU (the MP table's entries)."""
    if not isinstance(vcpu_count, int) or not 1 <= vcpu_count <= L.MAX_VCPUS:
        raise BootError(f"vCPU count must be 1..{L.MAX_VCPUS}, got {vcpu_count!r}")
    out = [struct.pack("<BBBBI", MADT_LAPIC, 8, i, i, LAPIC_ENABLED) for i in range(vcpu_count)]
    out.append(struct.pack("<BBBBII", MADT_IOAPIC, 12, ioapic_id(vcpu_count), 0, L.IOAPIC, 0))
    # KVM's default routing sends the PIT (ISA IRQ 0) to IOAPIC pin 0, not to pin 2 as
    # PC chipsets (and QEMU's own routing) do; say so instead of leaving guests to guess.
    # The flags are explicit (edge, active high) rather than "conforms": Linux takes an
    # override whose source equals FADT.SCI_INT (0 on a hardware-reduced platform) for
    # the SCI's, and defaults "conforms" to level/low there. The other ISA IRQs stay
    # identity-mapped, edge/high, which is ACPI's default without an override.
    out.append(struct.pack("<BBBBIH", MADT_ISO, 10, 0, 0, 0, MPS_EDGE_HIGH))
    out.append(struct.pack("<BBBHB", MADT_LAPIC_NMI, 6, ACPI_ALL_PROCESSORS,
                           MPS_INTI_CONFORMS, NMI_LINT))
    return out


def build_madt(vcpu_count: int) -> bytes:
    body = struct.pack("<II", L.LAPIC, MADT_PCAT_COMPAT) + b"".join(madt_entries(vcpu_count))
    return sdt(b"APIC", MADT_REVISION, body, b"NSVMAPIC")


def dsdt_aml(mmio_devices, *, serial: tuple[int, int] | None = (SERIAL_PORT, SERIAL_IRQ),
             i8042: bool = True) -> bytes:
    """The DSDT's AML: under \\_SB_, COM1 (PNP0501), the i8042 keyboard port (PNP0303)
    and one LNRO0005 device per virtio-mmio window, V000, V001, ... in `mmio_devices`
    order, each with _HID, _UID, _CCA and a _CRS of its window and edge, active-high
    interrupt (what virtio-mmio raises)."""
    devices = []
    if serial is not None:
        port, irq = serial
        devices.append(aml.device(
            "COM1", aml.name("_HID", aml.eisa_id("PNP0501")), aml.name("_UID", aml.integer(0)),
            aml.name("_DDN", aml.string("COM1")),
            aml.name("_CRS", aml.resource_template(aml.io_port(port, SERIAL_PORT_LEN),
                                                   aml.interrupt(irq)))))
    if i8042:
        devices.append(aml.device(
            "PS2_", aml.name("_HID", aml.eisa_id("PNP0303")), aml.name("_UID", aml.integer(0)),
            aml.name("_CRS", aml.resource_template(aml.io_port(I8042_DATA_PORT, 1),
                                                   aml.io_port(I8042_COMMAND_PORT, 1),
                                                   aml.interrupt(I8042_IRQ)))))
    for n, (base, size, irq) in enumerate(mmio_devices):
        if not 0 <= irq <= L.IRQ_MAX:
            raise BootError(f"virtio-mmio device at {base:#x}: IRQ {irq} is not an IOAPIC "
                            f"pin (0..{L.IRQ_MAX})")
        devices.append(aml.device(
            f"V{n:03X}", aml.name("_HID", aml.string(VIRTIO_MMIO_HID)),
            aml.name("_UID", aml.integer(n)), aml.name("_CCA", aml.integer(1)),
            aml.name("_CRS", aml.resource_template(aml.memory32_fixed(base, size),
                                                   aml.interrupt(irq)))))
    return aml.scope("\\_SB_", *devices)


def build_dsdt(mmio_devices, **legacy) -> bytes:
    return sdt(b"DSDT", DSDT_REVISION, dsdt_aml(mmio_devices, **legacy), b"NSVMDSDT")


def _align(addr: int) -> int:
    return (addr + TABLE_ALIGN - 1) & ~(TABLE_ALIGN - 1)


def build_acpi_tables(vcpu_count: int, mmio_devices, *, base: int = RSDP_ADDR,
                      serial: tuple[int, int] | None = (SERIAL_PORT, SERIAL_IRQ),
                      i8042: bool = True) -> list[tuple[int, bytes]]:
    """(guest address, bytes) of the RSDP and each table, laid out from `base`:
    RSDP, DSDT, FADT, MADT, XSDT, each 16-byte aligned."""
    mmio_devices = list(mmio_devices)
    madt = build_madt(vcpu_count)
    dsdt = build_dsdt(mmio_devices, serial=serial, i8042=i8042)
    dsdt_addr = _align(base + RSDP_LEN)
    fadt_addr = _align(dsdt_addr + len(dsdt))
    fadt = build_fadt(dsdt_addr, i8042=i8042)
    madt_addr = _align(fadt_addr + len(fadt))
    xsdt_addr = _align(madt_addr + len(madt))
    xsdt = build_xsdt([fadt_addr, madt_addr])
    return [(base, build_rsdp(xsdt_addr)), (dsdt_addr, dsdt), (fadt_addr, fadt),
            (madt_addr, madt), (xsdt_addr, xsdt)]


def write_acpi_tables(memory, vcpu_count: int, mmio_devices, *,
                      serial: tuple[int, int] | None = (SERIAL_PORT, SERIAL_IRQ),
                      i8042: bool = True) -> int:
    """Write the RSDP and the tables into guest RAM; returns the RSDP's address.

    `mmio_devices`: (base, size, irq) per virtio-mmio window, in the order the VMM
    placed them; `serial`: (port, irq) of the UART or None; `i8042`: whether the
    keyboard controller is there. Everything is checked before the first write."""
    blobs = build_acpi_tables(vcpu_count, mmio_devices, serial=serial, i8042=i8042)
    end = max(addr + len(data) for addr, data in blobs)
    if end > TABLES_END:
        raise BootError(f"ACPI tables ({end - RSDP_ADDR} bytes) do not fit in "
                        f"[{RSDP_ADDR:#x}, {TABLES_END:#x})")
    if not in_ram(memory, RSDP_ADDR, end - RSDP_ADDR):
        raise BootError(f"guest RAM does not cover the ACPI tables at "
                        f"[{RSDP_ADDR:#x}, {end:#x})")
    for addr, data in blobs:
        memory.write(addr, data)
    return RSDP_ADDR
