"""Why a VM stopped running. Each reason is distinct and documented (docs/vmm.md)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ExitReason(enum.Enum):
    #: The guest reset itself (i8042 0xFE, or KVM_SYSTEM_EVENT_RESET). Linux `reboot`/panic=1.
    GUEST_RESET = "guest-reset"
    #: The guest powered off (KVM_SYSTEM_EVENT_SHUTDOWN).
    GUEST_SHUTDOWN = "guest-shutdown"
    #: KVM_EXIT_SHUTDOWN: the vCPU triple-faulted (x86 shutdown state).
    TRIPLE_FAULT = "triple-fault"
    #: A vCPU executed HLT with interrupts disabled and no in-kernel irqchip woke it.
    HALTED = "halted"
    #: KVM could not emulate a guest instruction; detail carries the instruction bytes.
    EMULATION_FAILURE = "emulation-failure"
    #: Any other KVM_EXIT_INTERNAL_ERROR / FAIL_ENTRY / unknown exit.
    KVM_ERROR = "kvm-error"
    #: A device reported a fatal error.
    DEVICE_ERROR = "device-error"
    #: The VMM was asked to stop (API, signal, Ctrl-C).
    STOPPED = "stopped"

    @property
    def is_failure(self) -> bool:
        return self in (ExitReason.EMULATION_FAILURE, ExitReason.KVM_ERROR,
                        ExitReason.DEVICE_ERROR, ExitReason.TRIPLE_FAULT)

    @property
    def exit_code(self) -> int:
        """Process exit code used by `nodesvc-vmm`."""
        return _EXIT_CODES[self]


_EXIT_CODES = {
    ExitReason.GUEST_RESET: 0,
    ExitReason.GUEST_SHUTDOWN: 0,
    ExitReason.STOPPED: 0,
    ExitReason.HALTED: 0,
    ExitReason.TRIPLE_FAULT: 3,
    ExitReason.EMULATION_FAILURE: 4,
    ExitReason.KVM_ERROR: 5,
    ExitReason.DEVICE_ERROR: 6,
}


@dataclass(frozen=True)
class VmExit:
    reason: ExitReason
    detail: str = ""
    vcpu: int | None = None

    def __str__(self) -> str:
        where = f" on vCPU {self.vcpu}" if self.vcpu is not None else ""
        return f"{self.reason.value}{where}" + (f": {self.detail}" if self.detail else "")
