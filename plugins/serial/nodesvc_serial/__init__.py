"""nodesvc-serial: a 16550A UART console (port 0x3f8, IRQ 4) registered as device kind "serial"."""

from .uart import Uart16550

__all__ = ["Uart16550"]
