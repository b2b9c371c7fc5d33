"""Plugin glue: registers device kind "i8042" (loaded via the `nodesvc.plugins` entry point)."""

from __future__ import annotations

from typing import Any, Mapping

from nodesvc.plugins import device_hook
from nodesvc.vmm.device import DeviceKind
from nodesvc.vmm.exits import ExitReason, VmExit

from .i8042 import I8042

DATA_PORT = 0x60
COMMAND_PORT = 0x64   # 0x61-0x63 stay free: 0x61 is the PC speaker/PIT gate port
DEFAULT_IRQ = 1


class I8042Kind(DeviceKind):
    """The reset-only keyboard controller every VM gets (id "i8042")."""
    kind = "i8042"

    @classmethod
    def attach(cls, ctx, config: Mapping[str, Any] | None = None) -> I8042:
        """Two one-byte bus rows (0x60, 0x64) backed by one controller."""
        config = config or {}
        irq = int(config.get("irq", DEFAULT_IRQ))

        def on_reset() -> None:
            ctx.request_exit(VmExit(ExitReason.GUEST_RESET, "i8042 reset (0xFE)"))

        dev = I8042(ctx.irq_line(irq), on_reset)
        ctx.pio_bus.insert(DATA_PORT, 1, dev.data_port)
        ctx.pio_bus.insert(COMMAND_PORT, 1, dev.command_port)
        return dev


attach = I8042Kind.attach

register_devices = device_hook(I8042Kind)
