"""What a device plugin receives while a VM is being built, and what it returns.

Device lifecycle: a factory registered by a plugin is called once per VM build
with a `DeviceContext` and the device's config mapping. It inserts itself on a
bus, asks for IRQ lines, may append to the kernel command line, and returns the
device object. From then on it is driven only by bus accesses (vCPU threads)
and event-loop callbacks; it must never block either. Optional methods a
device may provide (looked up by the VMM, all called outside hot paths):

    console_input(data: bytes)  -- the device is a console; feed it keystrokes
    send_ctrl_alt_del()         -- the device can ask the guest to shut down
    close()                     -- release fds when the VM ends
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from .bus import Bus
from .exits import VmExit


class IrqLine(Protocol):
    gsi: int

    def trigger(self) -> None:
        """Raise an edge on the line (safe from any thread)."""


class OutputSink(Protocol):
    def write(self, data: bytes) -> None:
        """Accept console output. Must never block; may drop (and count) when full."""


@dataclass
class DeviceContext:
    vm_id: str
    memory: Any                      # nodesvc.vmm.memory.GuestMemory
    pio_bus: Bus
    mmio_bus: Bus
    event_loop: Any                  # nodesvc.vmm.eventloop.EventLoop
    irq_line: Callable[[int], IrqLine]
    console_out: OutputSink
    request_exit: Callable[[VmExit], None]
    cmdline: list[str] = field(default_factory=list)
    #: `rate_limiter(config) -> limiter | None`: builds a limiter of the kind named by
    #: `config["kind"]` (default "token-bucket") from the loaded limiter plugins.
    rate_limiter: Callable[[Mapping[str, Any] | None], Any] = lambda config: None
    #: `add_virtio_device(device, name) -> VirtioMmioTransport`: gives a virtio device its
    #: 4 KiB MMIO window and IRQ, and announces it on the kernel command line.
    add_virtio_device: Callable[..., Any] | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("nodesvc.vmm.device"))


DeviceFactory = Callable[[DeviceContext, Mapping[str, Any]], Any]
