"""Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI finds its
vCPUs, the IOAPIC and the ISA interrupt wiring.

Linux scans the last KiB of base memory (639 KiB = 0x9fc00) for the "_MP_" floating
pointer, which points at the "PCMP" configuration table right after it. Interrupt
routing follows KVM's default (kvm_setup_default_irq_routing): GSI n drives IOAPIC
pin n for n = 0..23, so every source entry maps bus IRQ n to pin n — the same
semantics as Firecracker's mptable.rs. Virtio-mmio devices use GSIs 5..23.
"""

from __future__ import annotations

from . import layout as L
from .abi import ffi, pack
from .errors import BootError
from .ram import in_ram

# mpspec_def.h
MP_PROCESSOR, MP_BUS, MP_IOAPIC, MP_INTSRC, MP_LINTSRC = 0, 1, 2, 3, 4
CPU_ENABLED, CPU_BOOTPROCESSOR = 1, 2
MPC_APIC_USABLE = 1
MP_INT, MP_NMI, MP_EXTINT = 0, 1, 3
MP_IRQPOL_DEFAULT = 0            # polarity/trigger "conforms to the bus" (ISA: edge, high)
MP_APIC_ALL = 0xFF
MP_SPEC_REV = 4                  # MP spec 1.4

LAPIC_VERSION = 0x14             # what KVM's local APIC reports
IOAPIC_VERSION = 0x11            # what KVM's in-kernel IOAPIC reports
CPU_SIGNATURE = 0x600            # family 6
CPU_FEATURES = 0x201             # CPUID.1:EDX APIC (bit 9) | FPU (bit 0)
OEM_ID = b"NODESVC "             # 8 characters, space padded
PRODUCT_ID = b"MICROVM     "     # 12 characters, space padded
BUS_ISA = b"ISA   "              # 6 characters, space padded


def _checksum(data: bytes) -> int:
    """The byte that makes the 8-bit sum of `data` plus itself zero."""
    return -sum(data) & 0xFF


def mptable_size(num_cpus: int) -> int:
    return (ffi.sizeof("struct mpf_intel") + ffi.sizeof("struct mpc_table")
            + num_cpus * ffi.sizeof("struct mpc_cpu") + ffi.sizeof("struct mpc_bus")
            + ffi.sizeof("struct mpc_ioapic") + (L.IRQ_MAX + 1) * ffi.sizeof("struct mpc_intsrc")
            + 2 * ffi.sizeof("struct mpc_lintsrc"))


def _entries(num_cpus: int) -> list:
    ioapic_id = num_cpus         # first APIC id after the vCPUs' 0..num_cpus-1
    out = []
    for i in range(num_cpus):
        out.append(ffi.new("struct mpc_cpu *", {
            "type": MP_PROCESSOR, "apicid": i, "apicver": LAPIC_VERSION,
            "cpuflag": CPU_ENABLED | (CPU_BOOTPROCESSOR if i == 0 else 0),
            "cpufeature": CPU_SIGNATURE, "featureflag": CPU_FEATURES}))
    out.append(ffi.new("struct mpc_bus *", {"type": MP_BUS, "busid": 0, "bustype": BUS_ISA}))
    out.append(ffi.new("struct mpc_ioapic *", {
        "type": MP_IOAPIC, "apicid": ioapic_id, "apicver": IOAPIC_VERSION,
        "flags": MPC_APIC_USABLE, "apicaddr": L.IOAPIC}))
    for irq in range(L.IRQ_MAX + 1):
        out.append(ffi.new("struct mpc_intsrc *", {
            "type": MP_INTSRC, "irqtype": MP_INT, "irqflag": MP_IRQPOL_DEFAULT,
            "srcbus": 0, "srcbusirq": irq, "dstapic": ioapic_id, "dstirq": irq}))
    # LINT0 of the BSP takes the 8259's ExtINT (virtual wire); LINT1 of every CPU is NMI.
    out.append(ffi.new("struct mpc_lintsrc *", {
        "type": MP_LINTSRC, "irqtype": MP_EXTINT, "irqflag": MP_IRQPOL_DEFAULT,
        "srcbusid": 0, "srcbusirq": 0, "destapic": 0, "destapiclint": 0}))
    out.append(ffi.new("struct mpc_lintsrc *", {
        "type": MP_LINTSRC, "irqtype": MP_NMI, "irqflag": MP_IRQPOL_DEFAULT,
        "srcbusid": 0, "srcbusirq": 0, "destapic": MP_APIC_ALL, "destapiclint": 1}))
    return out


def build_mptable(num_cpus: int, base: int = L.MPTABLE_START) -> bytes:
    """The floating pointer followed by the configuration table, for address `base`."""
    if not isinstance(num_cpus, int) or not 1 <= num_cpus <= L.MAX_VCPUS:
        raise BootError(f"vCPU count must be 1..{L.MAX_VCPUS}, got {num_cpus!r}")
    body = b"".join(pack(e) for e in _entries(num_cpus))
    entries = num_cpus + 1 + 1 + (L.IRQ_MAX + 1) + 2

    table = ffi.new("struct mpc_table *", {
        "signature": b"PCMP", "length": ffi.sizeof("struct mpc_table") + len(body),
        "spec": MP_SPEC_REV, "oem": OEM_ID, "productid": PRODUCT_ID,
        "oemcount": entries, "lapic": L.LAPIC})
    table.checksum = _checksum(pack(table) + body)

    mpf = ffi.new("struct mpf_intel *", {
        "signature": b"_MP_", "physptr": base + ffi.sizeof("struct mpf_intel"),
        "length": ffi.sizeof("struct mpf_intel") // 16,     # in 16-byte paragraphs
        "specification": MP_SPEC_REV})                      # feature1 = 0: table present
    mpf.checksum = _checksum(pack(mpf))
    return pack(mpf) + pack(table) + body


def write_mptable(mem, num_cpus: int) -> int:
    """Write the MP tables at MPTABLE_START; returns their size in bytes."""
    blob = build_mptable(num_cpus)
    end = L.MPTABLE_START + len(blob)
    if end > L.HIMEM_START:
        raise BootError(f"MP table for {num_cpus} vCPUs ({len(blob)} bytes) does not fit "
                        f"below {L.HIMEM_START:#x}")
    if not in_ram(mem, L.MPTABLE_START, len(blob)):
        raise BootError(f"guest RAM does not cover the MP table at "
                        f"[{L.MPTABLE_START:#x}, {end:#x})")
    mem.write(L.MPTABLE_START, blob)
    return len(blob)
