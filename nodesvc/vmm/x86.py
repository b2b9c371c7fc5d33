"""Per-vCPU x86_64 state for a direct long-mode Linux boot (Firecracker's layout).

CPUID comes from KVM_GET_SUPPORTED_CPUID with the hypervisor bit, per-vCPU APIC
ids and a flat topology (one package, `n` cores, one thread each). Only the boot
vCPU gets long-mode registers; the others wait for INIT/SIPI like real APs.
"""

from __future__ import annotations

from .kvm import constants as C
from .kvm.abi import ffi

from .boot import gdt
from .boot import layout as L

_LEAF_FEATURES, _LEAF_CACHE, _LEAF_PMU, _LEAF_TOPO, _LEAF_TOPO2 = 0x1, 0x4, 0xA, 0xB, 0x1F
_LEAF_AMD_SIZES, _LEAF_AMD_TOPO = 0x80000008, 0x8000001E
_LEAF_KVM_FEATURES = 0x40000001
_SIGNIFICANT_INDEX = 1  # KVM_CPUID_FLAG_SIGNIFCANT_INDEX
_ECX_HYPERVISOR = 1 << 31
_EDX_HTT = 1 << 28


def _bits_for(n: int) -> int:
    return max(n - 1, 0).bit_length()


def _topology_leaf(fn: int, index: int, count: int) -> list[dict]:
    """Leaf 0xB/0x1F subleaves: SMT level (1 thread), core level (`count` cores), end."""
    def entry(sub, eax, ebx, level):
        return {"function": fn, "index": sub, "flags": _SIGNIFICANT_INDEX, "eax": eax,
                "ebx": ebx, "ecx": (level << 8) | sub, "edx": index}
    return [entry(0, 0, 1, 1), entry(1, _bits_for(count), count, 2), entry(2, 0, 0, 0)]


def build_cpuid(supported: list[dict], index: int, count: int, *,
                kvm_features_off: int = 0) -> list[dict]:
    """CPUID entries for vCPU `index` of `count`: one package, `count` cores, 1 thread each."""
    out = []
    topo_done = set()
    for src in supported:
        e = dict(src)
        fn = e["function"]
        if fn == _LEAF_FEATURES:
            # EBX: [31:24] initial APIC id, [23:16] logical CPUs per package, [15:8] CLFLUSH size/8
            e["ebx"] = (index << 24) | (count << 16) | (8 << 8) | (e["ebx"] & 0xFF)
            e["ecx"] |= _ECX_HYPERVISOR
            e["edx"] = (e["edx"] | _EDX_HTT) if count > 1 else (e["edx"] & ~_EDX_HTT)
        elif fn == _LEAF_CACHE:
            # EAX[31:26] = cores per package - 1; [25:14] = threads sharing this cache - 1
            shared = 0 if ((e["eax"] >> 5) & 7) < 3 else count - 1
            if e["eax"] & 0x1F:
                e["eax"] = (e["eax"] & 0x3FFF) | ((count - 1) << 26) | (shared << 14)
        elif fn == _LEAF_PMU:
            e.update(eax=0, ebx=0, ecx=0, edx=0)  # no vPMU: nothing to emulate for perf
        elif fn in (_LEAF_TOPO, _LEAF_TOPO2):
            # The host's subleaves describe the host; ours describe the VM (all of them, so
            # Linux never reads a missing subleaf and invents one die per CPU).
            if fn not in topo_done:
                topo_done.add(fn)
                out += _topology_leaf(fn, index, count)
            continue
        elif fn == _LEAF_AMD_SIZES:
            # ECX[15:12] APIC-id bits for cores, [7:0] cores per package - 1
            e["ecx"] = (e["ecx"] & ~0xF0FF) | (_bits_for(count) << 12) | (count - 1)
        elif fn == _LEAF_KVM_FEATURES:
            e["eax"] &= ~kvm_features_off
        elif fn == _LEAF_AMD_TOPO:
            # extended APIC id; compute unit = core = index; one node
            e.update(eax=index, ebx=index & 0xFF, ecx=0)
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


def _set_segment(seg, fields: dict) -> None:
    for k, v in fields.items():
        setattr(seg, k, v)


def setup_sregs(vcpu) -> None:
    sregs = vcpu.get_sregs()
    seg = lambda i: gdt.decode_descriptor(gdt.BOOT_GDT[i]).kvm_segment_fields(i)  # noqa: E731
    _set_segment(sregs.cs, seg(1))
    for s in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _set_segment(s, seg(2))
    _set_segment(sregs.tr, seg(3))
    sregs.gdt.base, sregs.gdt.limit = L.GDT, gdt.GDT_LIMIT
    sregs.idt.base, sregs.idt.limit = L.IDT, gdt.IDT_LIMIT
    sregs.cr0 |= C.X86_CR0_PE | C.X86_CR0_PG | C.X86_CR0_ET
    sregs.cr3 = L.PML4
    sregs.cr4 |= C.X86_CR4_PAE
    sregs.efer |= C.EFER_LME | C.EFER_LMA
    vcpu.set_sregs(sregs)


def setup_regs(vcpu, entry: int) -> None:
    regs = vcpu.get_regs()
    regs.rflags = 0x2
    regs.rip = entry
    regs.rsp = regs.rbp = L.BOOT_STACK
    regs.rsi = L.ZERO_PAGE
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


#: KVM paravirt features whose hypercalls nested-PVM hosts never complete (a guest
#: sending a PV IPI spins on the hypercall forever); see docs/kvm-hosts.md.
KVM_FEATURE_PV_TLB_FLUSH, KVM_FEATURE_PV_SEND_IPI, KVM_FEATURE_PV_SCHED_YIELD = 1 << 9, 1 << 11, 1 << 13
PVM_KVM_FEATURES_OFF = KVM_FEATURE_PV_TLB_FLUSH | KVM_FEATURE_PV_SEND_IPI | KVM_FEATURE_PV_SCHED_YIELD


def configure_vcpu(vcpu, index: int, count: int, supported_cpuid: list[dict],
                   entry: int, *, kvm_features_off: int = 0) -> None:
    vcpu.set_cpuid2(build_cpuid(supported_cpuid, index, count, kvm_features_off=kvm_features_off))
    vcpu.set_msrs(boot_msrs())
    setup_fpu(vcpu)
    setup_lapic(vcpu)
    if index == 0:
        setup_regs(vcpu, entry)
        setup_sregs(vcpu)
