"""Interrupt lines into the in-kernel irqchip, one eventfd per GSI via KVM_IRQFD."""

from __future__ import annotations

from .kvm import EventFd


class IrqFdLine:
    """`trigger()` pulses the GSI: a write to an eventfd KVM is watching (any thread)."""

    def __init__(self, vm, gsi: int):
        self.gsi = gsi
        self.evt = EventFd()
        vm.register_irqfd(self.evt, gsi)
        self.triggered = 0

    def trigger(self) -> None:
        self.triggered += 1
        self.evt.write(1)

    def close(self) -> None:
        self.evt.close()
