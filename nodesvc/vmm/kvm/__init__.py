"""cffi bindings for /dev/kvm: `Kvm` → `Vm` → `Vcpu`, mirroring the kernel's fd hierarchy."""

from .abi import ffi
from .system import Kvm, Vm, Vcpu, EventFd
from . import constants

__all__ = ["ffi", "Kvm", "Vm", "Vcpu", "EventFd", "constants"]
