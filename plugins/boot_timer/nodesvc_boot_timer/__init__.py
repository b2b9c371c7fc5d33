"""nodesvc-boot-timer: Firecracker's boot-timer pseudo device, device kind "boot-timer"."""

from .device import BOOT_TIMER_ADDR, BOOT_TIMER_LEN, MAGIC_BOOT_COMPLETE, BootTimer

__all__ = ["BOOT_TIMER_ADDR", "BOOT_TIMER_LEN", "MAGIC_BOOT_COMPLETE", "BootTimer"]
