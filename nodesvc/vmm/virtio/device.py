"""What a virtio device plugin implements; the transport owns everything else.

Device state machine (driven by `VirtioMmioTransport`):

    created ──DRIVER_OK──► activate(queues, interrupt) ──► active
       ▲                                                     │ queue_notify(i) on the
       └──────────────── reset() ◄── status 0 / fail ────────┘ event-loop thread

A device supplies its id, feature bits, queue sizes and config space, and
processes queues when notified. It never touches transport registers. When the
driver hands it something it cannot survive it raises `VirtqueueError` (or calls
`interrupt.fail(reason)`): the transport sets NEEDS_RESET and stops the device.
"""

from __future__ import annotations

import struct
from typing import Protocol

from .queue import Virtqueue, VirtqueueError


class Interrupt(Protocol):
    def signal_used(self, queue: Virtqueue | None = None) -> None:
        """Tell the driver a queue has new used buffers (respects EVENT_IDX suppression)."""

    def signal_config(self) -> None:
        """Config space changed: bump the generation and interrupt."""

    def fail(self, reason: str) -> None:
        """Set NEEDS_RESET and stop the device until the driver resets it."""


class VirtioDevice:
    device_id: int = 0
    #: device-specific feature bits (the transport adds VERSION_1, EVENT_IDX, INDIRECT_DESC)
    features: int = 0
    queue_sizes: tuple[int, ...] = (256,)

    def __init__(self) -> None:
        self.acked_features = 0
        self.queues: list[Virtqueue] = []
        self.interrupt: Interrupt | None = None

    # -- config space (little-endian; subclasses provide `config_bytes`) ---------------
    def config_bytes(self) -> bytes:
        return b""

    def read_config(self, offset: int, size: int) -> int:
        data = self.config_bytes()
        if offset < 0 or offset + size > len(data):
            return 0
        return int.from_bytes(data[offset:offset + size], "little")

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Most config spaces are read-only; drivers writing them are ignored."""

    # -- lifecycle ----------------------------------------------------------------------
    def activate(self, queues: list[Virtqueue], interrupt: Interrupt) -> None:
        self.queues, self.interrupt = queues, interrupt

    def queue_notify(self, index: int) -> None:
        """The driver kicked queue `index` (event-loop thread)."""

    def resume_queue(self, index: int) -> None:
        """Process a queue outside a kick (e.g. a rate limiter woke up, event-loop thread).

        Hostile chains found there fail the device, exactly as on the kick path."""
        try:
            self.queue_notify(index)
        except VirtqueueError as e:
            if self.interrupt is not None:
                self.interrupt.fail(str(e))

    def reset(self) -> None:
        self.queues, self.interrupt, self.acked_features = [], None, 0

    def close(self) -> None:
        pass


def pack_le(fmt: str, *values) -> bytes:
    return struct.pack("<" + fmt, *values)
