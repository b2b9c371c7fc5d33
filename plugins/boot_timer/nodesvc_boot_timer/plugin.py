"""Plugin glue: registers device kind "boot-timer" (entry point `boot_timer`).

Config: an empty object (the address is fixed so guests can hard-code it).
"""

from __future__ import annotations

from typing import Any, Mapping

from nodesvc.plugins import device_hook
from nodesvc.vmm.device import DeviceKind
from nodesvc.vmm.errors import ConfigError

from .device import BOOT_TIMER_ADDR, BOOT_TIMER_LEN, BootTimer

KIND = "boot-timer"


def validate(config: Mapping[str, Any] | None) -> None:
    if config is None:
        return
    if not isinstance(config, Mapping):
        raise ConfigError(f"boot-timer: must be an object, got {type(config).__name__}")
    for key in config:
        raise ConfigError(f"boot-timer.{key}: unknown key; the boot timer takes no options")


class BootTimerKind(DeviceKind):
    kind = KIND     # one per VM, id "boot-timer"
    validate = staticmethod(validate)

    @classmethod
    def attach(cls, ctx, config: Mapping[str, Any] | None = None) -> BootTimer:
        """The clock starts now, during the VM build, before any vCPU runs."""
        validate(config)
        dev = BootTimer()
        ctx.mmio_bus.insert(BOOT_TIMER_ADDR, BOOT_TIMER_LEN, dev)
        dev.address = BOOT_TIMER_ADDR
        return dev


attach = BootTimerKind.attach

register_devices = device_hook(BootTimerKind)
