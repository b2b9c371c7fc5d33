"""Plugin glue: registers device kind "serial" (loaded via the `nodesvc.plugins` entry point)."""

from __future__ import annotations

from typing import Any, Mapping

from nodesvc.plugins import device_hook
from nodesvc.vmm.device import DeviceKind

from .uart import Uart16550

DEFAULT_PORT = 0x3F8   # COM1
DEFAULT_IRQ = 4
PORT_SPAN = 8


def _int(value: Any) -> int:
    # Configs may come from JSON/YAML where "0x3f8" is a string.
    return int(value, 0) if isinstance(value, str) else int(value)


class Serial(DeviceKind):
    """The console every VM gets (id "serial")."""
    kind = "serial"

    @classmethod
    def attach(cls, ctx, config: Mapping[str, Any] | None = None) -> Uart16550:
        """Put a UART on the PIO bus and wire it to the VM's console sink.

        The VMM adds `console=ttyS0` to the command line itself, so nothing is appended here.
        """
        config = config or {}
        port = _int(config.get("port", DEFAULT_PORT))
        irq = _int(config.get("irq", DEFAULT_IRQ))
        uart = Uart16550(ctx.irq_line(irq), ctx.console_out)
        ctx.pio_bus.insert(port, PORT_SPAN, uart)
        uart.port, uart.irq_gsi = port, irq
        return uart


attach = Serial.attach

register_devices = device_hook(Serial)
