"""`Kvm` (/dev/kvm) → `Vm` (VM fd) → `Vcpu` (vCPU fd), each owning its fd.

Every ioctl goes through `_ioctl`, which releases the GIL (cffi does for every
foreign call), never retries on EINTR (CPython's fcntl.ioctl would — that breaks
vCPU kicks) and turns errno into a `KvmError` naming the operation.
"""

from __future__ import annotations

import errno as _errno
import os

from ..errors import KvmError
from . import constants as C
from . import ioctls as I
from .abi import ffi, libc

_NAMES = {v: k for k, v in I.TABLE.items()}


def _ioctl(fd: int, request: int, arg=None) -> int:
    if arg is None:
        arg = ffi.cast("unsigned long", 0)
    elif isinstance(arg, int):
        arg = ffi.cast("unsigned long", arg)
    ret = libc.ioctl(fd, ffi.cast("unsigned long", request), arg)
    if ret < 0:
        err = ffi.errno
        raise KvmError(_NAMES.get(request, hex(request)), err, os.strerror(err))
    return ret


def _get(fd: int, request: int, ctype: str):
    obj = ffi.new(ctype + " *")
    _ioctl(fd, request, obj)
    return obj


class _Fd:
    def __init__(self, fd: int):
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def fileno(self) -> int:
        return self.fd


class EventFd(_Fd):
    """A Linux eventfd (used for irqfd and ioeventfd)."""

    def __init__(self, nonblocking: bool = True):
        super().__init__(os.eventfd(0, os.EFD_CLOEXEC | (os.EFD_NONBLOCK if nonblocking else 0)))

    def write(self, value: int = 1) -> None:
        os.eventfd_write(self.fd, value)

    def read(self) -> int:
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0


class Kvm(_Fd):
    def __init__(self, path: str = "/dev/kvm"):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KvmError(f"open {path}", e.errno, e.strerror) from None
        super().__init__(fd)
        version = _ioctl(fd, I.KVM_GET_API_VERSION)
        if version != C.KVM_API_VERSION:
            self.close()
            raise KvmError("KVM_GET_API_VERSION", 0, f"unsupported KVM API version {version}")

    def check_extension(self, cap: int) -> int:
        return _ioctl(self.fd, I.KVM_CHECK_EXTENSION, cap)

    def missing_caps(self) -> list[str]:
        return [name for name, cap in C.REQUIRED_CAPS.items() if not self.check_extension(cap)]

    def vcpu_mmap_size(self) -> int:
        return _ioctl(self.fd, I.KVM_GET_VCPU_MMAP_SIZE)

    def supported_cpuid(self, max_entries: int = 256):
        """KVM_GET_SUPPORTED_CPUID → list of dicts (function, index, flags, eax, ebx, ecx, edx)."""
        while True:
            cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": max_entries, "entries": max_entries})
            cpuid.nent = max_entries
            try:
                _ioctl(self.fd, I.KVM_GET_SUPPORTED_CPUID, cpuid)
            except KvmError as e:
                if e.errno == _errno.E2BIG and max_entries < 4096:
                    max_entries *= 2
                    continue
                raise
            keys = ("function", "index", "flags", "eax", "ebx", "ecx", "edx")
            return [{k: getattr(cpuid.entries[i], k) for k in keys} for i in range(cpuid.nent)]

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM can save and restore for a guest."""
        n = 0
        while True:
            obj = ffi.new("struct kvm_msr_list *", {"nmsrs": n, "indices": max(n, 1)})
            obj.nmsrs = n
            try:
                _ioctl(self.fd, I.KVM_GET_MSR_INDEX_LIST, obj)
            except KvmError as e:
                if e.errno == _errno.E2BIG and obj.nmsrs > n:
                    n = obj.nmsrs   # the kernel told us how many there are
                    continue
                raise
            return [obj.indices[i] for i in range(obj.nmsrs)]

    def create_vm(self) -> "Vm":
        return Vm(self, _ioctl(self.fd, I.KVM_CREATE_VM, 0))


class Vm(_Fd):
    def __init__(self, kvm: Kvm, fd: int):
        super().__init__(fd)
        self.kvm = kvm
        self._slots = 0

    def set_tss_addr(self, addr: int) -> None:
        _ioctl(self.fd, I.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        _ioctl(self.fd, I.KVM_SET_IDENTITY_MAP_ADDR, ffi.new("uint64_t *", addr))

    def create_irqchip(self) -> None:
        _ioctl(self.fd, I.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = C.KVM_PIT_SPEAKER_DUMMY) -> None:
        _ioctl(self.fd, I.KVM_CREATE_PIT2, ffi.new("struct kvm_pit_config *", {"flags": flags}))

    def add_memory_region(self, guest_phys_addr: int, size: int, host_addr: int,
                          flags: int = 0) -> int:
        region = ffi.new("struct kvm_userspace_memory_region *", {
            "slot": self._slots, "flags": flags, "guest_phys_addr": guest_phys_addr,
            "memory_size": size, "userspace_addr": host_addr})
        _ioctl(self.fd, I.KVM_SET_USER_MEMORY_REGION, region)
        self._slots += 1
        return region.slot

    def irq_line(self, irq: int, level: int) -> None:
        _ioctl(self.fd, I.KVM_IRQ_LINE, ffi.new("struct kvm_irq_level *", {"irq": irq, "level": level}))

    def register_irqfd(self, evt: EventFd, gsi: int) -> None:
        _ioctl(self.fd, I.KVM_IRQFD, ffi.new("struct kvm_irqfd *", {"fd": evt.fd, "gsi": gsi}))

    def register_ioeventfd(self, evt: EventFd, addr: int, length: int = 4, *,
                           datamatch: int | None = None, pio: bool = False) -> None:
        flags = (C.KVM_IOEVENTFD_FLAG_PIO if pio else 0)
        if datamatch is not None:
            flags |= C.KVM_IOEVENTFD_FLAG_DATAMATCH
        _ioctl(self.fd, I.KVM_IOEVENTFD, ffi.new("struct kvm_ioeventfd *", {
            "datamatch": datamatch or 0, "addr": addr, "len": length, "fd": evt.fd,
            "flags": flags}))

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (KVM_CAP_XSAVE2's size is only given here)."""
        return _ioctl(self.fd, I.KVM_CHECK_EXTENSION, cap)

    def get_clock(self):
        return _get(self.fd, I.KVM_GET_CLOCK, "struct kvm_clock_data")

    def set_clock(self, clock) -> None:
        _ioctl(self.fd, I.KVM_SET_CLOCK, clock)

    def get_irqchip(self, chip_id: int):
        chip = ffi.new("struct kvm_irqchip *", {"chip_id": chip_id})
        _ioctl(self.fd, I.KVM_GET_IRQCHIP, chip)
        return chip

    def set_irqchip(self, chip) -> None:
        _ioctl(self.fd, I.KVM_SET_IRQCHIP, chip)

    def get_pit2(self):
        return _get(self.fd, I.KVM_GET_PIT2, "struct kvm_pit_state2")

    def set_pit2(self, pit) -> None:
        _ioctl(self.fd, I.KVM_SET_PIT2, pit)

    def create_vcpu(self, index: int) -> "Vcpu":
        return Vcpu(self, index, _ioctl(self.fd, I.KVM_CREATE_VCPU, index))


class Vcpu(_Fd):
    def __init__(self, vm: Vm, index: int, fd: int):
        super().__init__(fd)
        self.vm, self.index = vm, index
        self.mmap_size = vm.kvm.vcpu_mmap_size()
        addr = libc.mmap(ffi.NULL, self.mmap_size, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, fd, 0)
        if int(ffi.cast("uintptr_t", addr)) == C.MAP_FAILED:
            err = ffi.errno
            raise KvmError("mmap(kvm_run)", err, os.strerror(err))
        self._run_mem = addr
        #: the shared `struct kvm_run`; read exit data from it after `run()`.
        self.run_struct = ffi.cast("struct kvm_run *", addr)
        #: byte view of the whole mmap (PIO data lives at run_struct.io.data_offset).
        self.run_buffer = ffi.buffer(addr, self.mmap_size)

    def run(self) -> int:
        """One KVM_RUN. Returns the exit reason, or KVM_EXIT_INTR when a signal kicked us."""
        ret = libc.ioctl(self.fd, ffi.cast("unsigned long", I.KVM_RUN), ffi.cast("unsigned long", 0))
        if ret < 0:
            err = ffi.errno
            if err in (_errno.EINTR, _errno.EAGAIN):
                return C.KVM_EXIT_INTR
            raise KvmError("KVM_RUN", err, os.strerror(err))
        return self.run_struct.exit_reason

    def _get(self, request: int, ctype: str):
        obj = ffi.new(ctype + " *")
        _ioctl(self.fd, request, obj)
        return obj

    def get_regs(self):
        return self._get(I.KVM_GET_REGS, "struct kvm_regs")

    def set_regs(self, regs) -> None:
        _ioctl(self.fd, I.KVM_SET_REGS, regs)

    def get_sregs(self):
        return self._get(I.KVM_GET_SREGS, "struct kvm_sregs")

    def set_sregs(self, sregs) -> None:
        _ioctl(self.fd, I.KVM_SET_SREGS, sregs)

    def get_fpu(self):
        return self._get(I.KVM_GET_FPU, "struct kvm_fpu")

    def set_fpu(self, fpu) -> None:
        _ioctl(self.fd, I.KVM_SET_FPU, fpu)

    def get_lapic(self):
        return self._get(I.KVM_GET_LAPIC, "struct kvm_lapic_state")

    def set_lapic(self, lapic) -> None:
        _ioctl(self.fd, I.KVM_SET_LAPIC, lapic)

    def get_mp_state(self) -> int:
        return self._get(I.KVM_GET_MP_STATE, "struct kvm_mp_state").mp_state

    def set_mp_state(self, state: int) -> None:
        _ioctl(self.fd, I.KVM_SET_MP_STATE, ffi.new("struct kvm_mp_state *", {"mp_state": state}))

    def get_xsave(self, size: int = 4096):
        """KVM_GET_XSAVE2 when the VM's XSAVE area is larger than 4 KiB, else KVM_GET_XSAVE."""
        extra = max(0, size - 4096) // 4
        obj = ffi.new("struct kvm_xsave *", {"extra": extra} if extra else {})
        _ioctl(self.fd, I.KVM_GET_XSAVE2 if extra else I.KVM_GET_XSAVE, obj)
        return obj

    def set_xsave(self, xsave) -> None:
        _ioctl(self.fd, I.KVM_SET_XSAVE, xsave)

    def get_xcrs(self):
        return self._get(I.KVM_GET_XCRS, "struct kvm_xcrs")

    def set_xcrs(self, xcrs) -> None:
        _ioctl(self.fd, I.KVM_SET_XCRS, xcrs)

    def get_debugregs(self):
        return self._get(I.KVM_GET_DEBUGREGS, "struct kvm_debugregs")

    def set_debugregs(self, dregs) -> None:
        _ioctl(self.fd, I.KVM_SET_DEBUGREGS, dregs)

    def get_vcpu_events(self):
        return self._get(I.KVM_GET_VCPU_EVENTS, "struct kvm_vcpu_events")

    def set_vcpu_events(self, events) -> None:
        _ioctl(self.fd, I.KVM_SET_VCPU_EVENTS, events)

    def get_tsc_khz(self) -> int:
        return _ioctl(self.fd, I.KVM_GET_TSC_KHZ)

    def set_tsc_khz(self, khz: int) -> None:
        _ioctl(self.fd, I.KVM_SET_TSC_KHZ, khz)

    def kvmclock_ctrl(self) -> None:
        _ioctl(self.fd, I.KVM_KVMCLOCK_CTRL)

    def get_cpuid2(self, max_entries: int = 256) -> list[dict]:
        """KVM_GET_CPUID2: the entries last set with KVM_SET_CPUID2."""
        while True:
            cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": max_entries, "entries": max_entries})
            cpuid.nent = max_entries
            try:
                _ioctl(self.fd, I.KVM_GET_CPUID2, cpuid)
            except KvmError as e:
                if e.errno == _errno.E2BIG and max_entries < 4096:
                    max_entries *= 2
                    continue
                raise
            keys = ("function", "index", "flags", "eax", "ebx", "ecx", "edx")
            return [{k: getattr(cpuid.entries[i], k) for k in keys} for i in range(cpuid.nent)]

    def set_cpuid2(self, entries: list[dict]) -> None:
        cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": len(entries), "entries": len(entries)})
        cpuid.nent = len(entries)
        for i, e in enumerate(entries):
            for k, v in e.items():
                setattr(cpuid.entries[i], k, v)
        _ioctl(self.fd, I.KVM_SET_CPUID2, cpuid)

    def set_msrs(self, msrs: dict[int, int]) -> None:
        n = len(msrs)
        obj = ffi.new("struct kvm_msrs *", {"nmsrs": n, "entries": n})
        obj.nmsrs = n
        for i, (index, data) in enumerate(msrs.items()):
            obj.entries[i].index, obj.entries[i].data = index, data
        done = _ioctl(self.fd, I.KVM_SET_MSRS, obj)
        if done != n:
            bad = list(msrs)[done]
            raise KvmError("KVM_SET_MSRS", 0, f"KVM refused MSR {bad:#x} ({done}/{n} set)")

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        n = len(indices)
        obj = ffi.new("struct kvm_msrs *", {"nmsrs": n, "entries": n})
        obj.nmsrs = n
        for i, index in enumerate(indices):
            obj.entries[i].index = index
        done = _ioctl(self.fd, I.KVM_GET_MSRS, obj)
        return {obj.entries[i].index: obj.entries[i].data for i in range(done)}

    def translate(self, linear: int) -> int | None:
        t = ffi.new("struct kvm_translation *", {"linear_address": linear})
        _ioctl(self.fd, I.KVM_TRANSLATE, t)
        return t.physical_address if t.valid else None

    def close(self) -> None:
        if self._run_mem is not None:
            libc.munmap(self._run_mem, self.mmap_size)
            self._run_mem = None
        super().close()
