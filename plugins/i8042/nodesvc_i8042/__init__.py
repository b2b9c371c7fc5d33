"""nodesvc-i8042: a reset-only i8042 keyboard controller (ports 0x60/0x64, IRQ 1), kind "i8042"."""

from .i8042 import I8042

__all__ = ["I8042"]
