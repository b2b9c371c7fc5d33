"""vCPU and VM (clock, PIC/IOAPIC, PIT) state, in Firecracker's order and with its reasons.

Save, per vCPU (the VM paused, every vCPU parked outside KVM_RUN): MP state first (getting
it makes KVM accept pending APIC events), then regs, sregs, XSAVE (or the legacy FPU when
the host has no XSAVE), XCRs, debug regs, LAPIC, TSC frequency, CPUID, MSRs, and the vCPU
events last. Restore: CPUID, MP state, regs (they clear pending exceptions, so before the
events), sregs (they carry apic_base, so before the LAPIC), XSAVE, XCRs, debug regs,
LAPIC (before the MSRs: TSC_DEADLINE needs it), MSRs (TSC_DEADLINE in its own last chunk,
after IA32_TSC), events, then KVMCLOCK_CTRL (a warning only: EINVAL without kvm-clock).

KVM structs are kept as their raw bytes (base64): they are the kernel's stable UAPI, and
saved bytes go back through the same ioctl on the same layout.
"""

from __future__ import annotations

import base64
import logging

from ..errors import KvmError
from ..kvm import constants as C
from ..kvm.abi import ffi
from .format import SnapshotError, SnapshotMismatch

log = logging.getLogger("nodesvc.vmm.snapshot")

MSR_IA32_TSC_DEADLINE = 0x6E0
MSR_CHUNK = 64          # MSRs per KVM_GET/SET_MSRS call (Firecracker: KVM_MAX_MSR_ENTRIES)
TSC_KHZ_TOLERANCE_PPM = 250

#: Firecracker's SERIALIZABLE_MSR_RANGES (arch/x86_64/msr.rs): what a snapshot carries
#: out of KVM_GET_MSR_INDEX_LIST. MCG_CTL (0x17b) is left out, as there.
_MSR_RANGES = (
    (0x10, 1), (0x1B, 1), (0x3B, 1), (0x48, 1), (0x174, 3), (0x1A0, 1), (0x1D9, 1),
    (0x200, 0x100),                      # MTRRs, PAT, MTRRdefType
    (0x400, 0x80),                       # MC0_CTL ... (machine-check banks)
    (MSR_IA32_TSC_DEADLINE, 1),
    (0x800, 0x400),                      # x2APIC
    (0xC0000080, 5),                     # EFER, STAR, LSTAR, CSTAR, SYSCALL_MASK
    (0xC0000100, 4),                     # FS/GS/KERNEL_GS_BASE, TSC_AUX
    (0x122, 1), (0xDA0, 1),              # TSX_CTRL, XSS
    (0x4B564D00, 0x100),                 # KVM paravirt (kvm-clock, async PF, steal time…)
)


def serializable_msrs(index_list: list[int]) -> list[int]:
    """The MSRs KVM reports that a snapshot saves, TSC_DEADLINE last."""
    keep = [i for i in index_list if any(lo <= i < lo + n for lo, n in _MSR_RANGES)]
    keep = sorted(set(keep), key=lambda i: (i == MSR_IA32_TSC_DEADLINE, i))
    return keep


def b64(obj, size: int | None = None) -> str:
    return base64.b64encode(bytes(ffi.buffer(obj, size) if size else ffi.buffer(obj))).decode()


def unb64(ctype: str, text: str, what: str, **init):
    data = base64.b64decode(text)
    obj = ffi.new(ctype + " *", init) if init else ffi.new(ctype + " *")
    buf = ffi.buffer(obj)
    if len(data) != len(buf):
        raise SnapshotMismatch(f"{what}: saved {len(data)} bytes, this host's "
                               f"{ctype} has {len(buf)}")
    buf[:] = data
    return obj


class HostCaps:
    """What this host's KVM offers for state save/restore, asked once per VM."""

    def __init__(self, kvm, vm):
        self.xsave = bool(kvm.check_extension(C.KVM_CAP_XSAVE))
        size = vm.check_extension(C.KVM_CAP_XSAVE2) if self.xsave else 0
        self.xsave_size = max(size, 4096) if self.xsave else 0
        self.xcrs = bool(kvm.check_extension(C.KVM_CAP_XCRS))
        self.tsc_control = bool(kvm.check_extension(C.KVM_CAP_TSC_CONTROL))
        self.msrs = serializable_msrs(kvm.msr_index_list())


# -- vCPU --------------------------------------------------------------------------------

def save_vcpu(vcpu, caps: HostCaps) -> dict:
    s: dict = {"index": vcpu.index, "mp_state": vcpu.get_mp_state()}
    s["regs"] = b64(vcpu.get_regs())
    s["sregs"] = b64(vcpu.get_sregs())
    if caps.xsave:
        s["xsave"] = b64(vcpu.get_xsave(caps.xsave_size), caps.xsave_size)
    else:
        s["fpu"] = b64(vcpu.get_fpu())
    if caps.xcrs:
        s["xcrs"] = b64(vcpu.get_xcrs())
    s["debugregs"] = b64(vcpu.get_debugregs())
    s["lapic"] = b64(vcpu.get_lapic())
    try:
        s["tsc_khz"] = vcpu.get_tsc_khz()
    except KvmError as e:
        log.warning("vCPU %d: no TSC frequency in the snapshot: %s", vcpu.index, e)
        s["tsc_khz"] = None
    s["cpuid"] = vcpu.get_cpuid2()
    s["msrs"] = _get_msrs(vcpu, caps.msrs)
    s["events"] = b64(vcpu.get_vcpu_events())
    return s


def _get_msrs(vcpu, indices: list[int]) -> list[list[int]]:
    """[[index, value]…]. KVM_GET_MSRS stops at the first MSR it cannot read; such an MSR
    is left out (and logged) rather than failing the snapshot."""
    out, pos = [], 0
    while pos < len(indices):
        chunk = indices[pos:pos + MSR_CHUNK]
        got = vcpu.get_msrs(chunk)
        out += [[i, got[i]] for i in chunk[:len(got)]]
        pos += len(got)
        if len(got) < len(chunk):
            log.debug("vCPU %d: MSR %#x not readable; not saved", vcpu.index, indices[pos])
            pos += 1
    tsc = next((v for i, v in out if i == C.MSR_IA32_TSC), None)
    for e in out:   # Firecracker: a zero deadline is saved as "now" (the TSC)
        if e[0] == MSR_IA32_TSC_DEADLINE and e[1] == 0 and tsc is not None:
            e[1] = tsc
    return out


def restore_vcpu(vcpu, s: dict, caps: HostCaps) -> None:
    i = vcpu.index
    vcpu.set_cpuid2(s["cpuid"])
    vcpu.set_mp_state(s["mp_state"])
    vcpu.set_regs(unb64("struct kvm_regs", s["regs"], f"vCPU {i} regs"))
    vcpu.set_sregs(unb64("struct kvm_sregs", s["sregs"], f"vCPU {i} sregs"))
    if "xsave" in s:
        if not caps.xsave:
            raise SnapshotMismatch(f"vCPU {i}: the snapshot has XSAVE state and this host's "
                                   "KVM has no KVM_CAP_XSAVE")
        data = base64.b64decode(s["xsave"])
        extra = max(0, len(data) - 4096) // 4
        xsave = ffi.new("struct kvm_xsave *", {"extra": extra} if extra else {})
        ffi.buffer(xsave, len(data))[:] = data
        vcpu.set_xsave(xsave)
    else:
        vcpu.set_fpu(unb64("struct kvm_fpu", s["fpu"], f"vCPU {i} fpu"))
    if "xcrs" in s and caps.xcrs:
        vcpu.set_xcrs(unb64("struct kvm_xcrs", s["xcrs"], f"vCPU {i} xcrs"))
    vcpu.set_debugregs(unb64("struct kvm_debugregs", s["debugregs"], f"vCPU {i} debugregs"))
    vcpu.set_lapic(unb64("struct kvm_lapic_state", s["lapic"], f"vCPU {i} lapic"))
    msrs = s["msrs"]
    for pos in range(0, len(msrs), MSR_CHUNK):
        chunk = msrs[pos:pos + MSR_CHUNK]
        deadline = [e for e in chunk if e[0] == MSR_IA32_TSC_DEADLINE]
        rest = [e for e in chunk if e[0] != MSR_IA32_TSC_DEADLINE]
        for part in (rest, deadline):
            if part:
                try:
                    vcpu.set_msrs(dict((int(a), int(b)) for a, b in part))
                except KvmError as e:
                    raise SnapshotError(f"vCPU {i}: restoring MSRs: {e}") from None
    vcpu.set_vcpu_events(unb64("struct kvm_vcpu_events", s["events"], f"vCPU {i} events"))
    try:
        vcpu.kvmclock_ctrl()
    except KvmError as e:     # EINVAL when the guest has no kvm-clock: harmless
        log.debug("vCPU %d: KVMCLOCK_CTRL: %s", i, e)


def match_tsc(vcpus, saved_khz: int | None, caps: HostCaps) -> None:
    """Scale the guest TSC to the saved frequency when this host's differs by > 250 ppm."""
    if not saved_khz or not vcpus:
        return
    try:
        host = vcpus[0].get_tsc_khz()
    except KvmError:
        return
    if abs(host - saved_khz) * 1_000_000 <= TSC_KHZ_TOLERANCE_PPM * saved_khz:
        return
    if not caps.tsc_control:
        raise SnapshotMismatch(f"the snapshot's TSC runs at {saved_khz} kHz, this host's at "
                               f"{host} kHz, and KVM cannot scale it (no KVM_CAP_TSC_CONTROL)")
    for v in vcpus:
        v.set_tsc_khz(saved_khz)


# -- VM ----------------------------------------------------------------------------------

_CHIPS = (C.KVM_IRQCHIP_PIC_MASTER, C.KVM_IRQCHIP_PIC_SLAVE, C.KVM_IRQCHIP_IOAPIC)


def save_vm(vm) -> dict:
    """Firecracker's order: PIT, clock, then the three irqchips."""
    pit = vm.get_pit2()
    clock = vm.get_clock()
    return {"pit2": b64(pit), "clock": clock.clock, "clock_flags": clock.flags,
            "irqchips": [b64(vm.get_irqchip(c)) for c in _CHIPS]}


def restore_vm(vm, s: dict) -> None:
    vm.set_pit2(unb64("struct kvm_pit_state2", s["pit2"], "PIT"))
    # Flags forced to 0 (Firecracker): only `clock` is applied, the guest's kvm-clock
    # continues from the saved value.
    vm.set_clock(ffi.new("struct kvm_clock_data *", {"clock": s["clock"]}))
    if len(s["irqchips"]) != len(_CHIPS):
        raise SnapshotMismatch(f"the snapshot has {len(s['irqchips'])} irqchip states, not 3")
    for chip_id, text in zip(_CHIPS, s["irqchips"]):
        chip = unb64("struct kvm_irqchip", text, f"irqchip {chip_id}")
        if chip.chip_id != chip_id:
            raise SnapshotMismatch(f"irqchip {chip_id}: saved state is for chip {chip.chip_id}")
        vm.set_irqchip(chip)
