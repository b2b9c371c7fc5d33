"""Per-vCPU x86_64 state for a direct long-mode Linux boot (Firecracker's layout).

CPUID comes from KVM_GET_SUPPORTED_CPUID with the hypervisor bit, per-vCPU APIC
ids and a flat topology (one package, `n` cores, one thread each). Only the boot
vCPU gets long-mode registers; the others wait for INIT/SIPI like real APs.
"""

from __future__ import annotations

from .kvm import constants as C
from .kvm.abi import ffi

# Where the boot loader puts things (see nodesvc/vmm/boot/layout.py for the memory map).
GDT_ADDR = 0x500
IDT_ADDR = 0x520
PML4_ADDR = 0x9000
ZERO_PAGE = 0x7000
BOOT_STACK = 0x8FF0

# Boot GDT: null, 64-bit code, data, TSS — flags/access packed as Firecracker does.
BOOT_GDT = (0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x008F8B000000FFFF)
CODE_SEL, DATA_SEL, TSS_SEL = 0x08, 0x10, 0x18

_LEAF_FEATURES, _LEAF_CACHE, _LEAF_PMU, _LEAF_TOPO, _LEAF_TOPO2 = 0x1, 0x4, 0xA, 0xB, 0x1F
_ECX_HYPERVISOR = 1 << 31
_EDX_HTT = 1 << 28


def _bits_for(n: int) -> int:
    return max(n - 1, 0).bit_length()


def build_cpuid(supported: list[dict], index: int, count: int) -> list[dict]:
    """CPUID entries for vCPU `index` of `count`."""
    out = []
    for src in supported:
        e = dict(src)
        fn, sub = e["function"], e["index"]
        if fn == _LEAF_FEATURES:
            # EBX: [31:24] initial APIC id, [23:16] logical CPUs per package, [15:8] CLFLUSH size/8
            e["ebx"] = (index << 24) | (count << 16) | (8 << 8) | (e["ebx"] & 0xFF)
            e["ecx"] |= _ECX_HYPERVISOR
            e["edx"] = (e["edx"] | _EDX_HTT) if count > 1 else (e["edx"] & ~_EDX_HTT)
        elif fn == _LEAF_CACHE:
            # EAX[31:26] = cores per package - 1; [25:14] = threads sharing this cache - 1
            shared = 0 if ((e["eax"] >> 5) & 7) < 3 else count - 1
            e["eax"] = (e["eax"] & 0x3FFF) | ((count - 1) << 26) | (shared << 14)
        elif fn == _LEAF_PMU:
            e.update(eax=0, ebx=0, ecx=0, edx=0)  # no vPMU: nothing to emulate for perf
        elif fn in (_LEAF_TOPO, _LEAF_TOPO2):
            e["edx"] = index  # x2APIC id
            if sub == 0:      # SMT level: one thread per core
                e.update(eax=0, ebx=1, ecx=(1 << 8) | sub)
            elif sub == 1:    # core level: `count` cores in the package
                e.update(eax=_bits_for(count), ebx=count, ecx=(2 << 8) | sub)
            else:
                e.update(eax=0, ebx=0, ecx=sub)
        out.append(e)
    return out


def boot_msrs() -> dict[int, int]:
    return {
        C.MSR_IA32_SYSENTER_CS: 0, C.MSR_IA32_SYSENTER_ESP: 0, C.MSR_IA32_SYSENTER_EIP: 0,
        C.MSR_STAR: 0, C.MSR_CSTAR: 0, C.MSR_KERNEL_GS_BASE: 0, C.MSR_SYSCALL_MASK: 0,
        C.MSR_LSTAR: 0, C.MSR_IA32_TSC: 0,
        C.MSR_IA32_MISC_ENABLE: C.MSR_IA32_MISC_ENABLE_FAST_STRING,
        C.MSR_MTRR_DEF_TYPE: (1 << 11) | 6,  # MTRRs enabled, default write-back
    }


def segment_from_descriptor(desc: int, selector: int) -> dict:
    """Decode a GDT descriptor into the fields of `struct kvm_segment`."""
    limit = (desc & 0xFFFF) | ((desc >> 32) & 0xF0000)
    g = (desc >> 55) & 1
    return {
        "base": ((desc >> 16) & 0xFFFFFF) | (((desc >> 56) & 0xFF) << 24),
        "limit": (limit << 12) | 0xFFF if g else limit,
        "selector": selector,
        "type": (desc >> 40) & 0xF,
        "present": (desc >> 47) & 1,
        "dpl": (desc >> 45) & 3,
        "db": (desc >> 54) & 1,
        "s": (desc >> 44) & 1,
        "l": (desc >> 53) & 1,
        "g": g,
        "avl": (desc >> 52) & 1,
        "unusable": 0 if (desc >> 47) & 1 else 1,
    }


def _set_segment(seg, fields: dict) -> None:
    for k, v in fields.items():
        setattr(seg, k, v)


def setup_sregs(vcpu) -> None:
    sregs = vcpu.get_sregs()
    code = segment_from_descriptor(BOOT_GDT[1], CODE_SEL)
    data = segment_from_descriptor(BOOT_GDT[2], DATA_SEL)
    _set_segment(sregs.cs, code)
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _set_segment(seg, data)
    _set_segment(sregs.tr, segment_from_descriptor(BOOT_GDT[3], TSS_SEL))
    sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, len(BOOT_GDT) * 8 - 1
    sregs.idt.base, sregs.idt.limit = IDT_ADDR, 7
    sregs.cr0 |= C.X86_CR0_PE | C.X86_CR0_PG | C.X86_CR0_ET
    sregs.cr3 = PML4_ADDR
    sregs.cr4 |= C.X86_CR4_PAE
    sregs.efer |= C.EFER_LME | C.EFER_LMA
    vcpu.set_sregs(sregs)


def setup_regs(vcpu, entry: int) -> None:
    regs = vcpu.get_regs()
    regs.rflags = 0x2
    regs.rip = entry
    regs.rsp = regs.rbp = BOOT_STACK
    regs.rsi = ZERO_PAGE
    vcpu.set_regs(regs)


def setup_fpu(vcpu) -> None:
    fpu = vcpu.get_fpu()
    fpu.fcw, fpu.mxcsr = 0x37F, 0x1F80
    vcpu.set_fpu(fpu)


def setup_lapic(vcpu) -> None:
    """LINT0 = ExtINT (legacy PIC through the LAPIC), LINT1 = NMI, as the MP spec expects."""
    lapic = vcpu.get_lapic()
    regs = ffi.buffer(lapic.regs)  # the LAPIC register page, as hardware lays it out

    def get(off: int) -> int:
        return int.from_bytes(regs[off:off + 4], "little")

    def put(off: int, value: int) -> None:
        regs[off:off + 4] = value.to_bytes(4, "little")

    put(C.APIC_LVT0, (get(C.APIC_LVT0) & ~0x700) | (C.APIC_MODE_EXTINT << 8))
    put(C.APIC_LVT1, (get(C.APIC_LVT1) & ~0x700) | (C.APIC_MODE_NMI << 8))
    vcpu.set_lapic(lapic)


def configure_vcpu(vcpu, index: int, count: int, supported_cpuid: list[dict],
                   entry: int) -> None:
    vcpu.set_cpuid2(build_cpuid(supported_cpuid, index, count))
    vcpu.set_msrs(boot_msrs())
    setup_fpu(vcpu)
    setup_lapic(vcpu)
    if index == 0:
        setup_regs(vcpu, entry)
        setup_sregs(vcpu)
