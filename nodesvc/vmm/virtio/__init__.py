"""virtio-mmio transport, split virtqueues and the device base class."""

from .device import Interrupt, VirtioDevice, pack_le
from .mmio import VirtioMmioTransport
from .queue import Descriptor, DescriptorChain, Virtqueue, VirtqueueError
from . import constants

__all__ = ["Interrupt", "VirtioDevice", "pack_le", "VirtioMmioTransport", "Descriptor",
           "DescriptorChain", "Virtqueue", "VirtqueueError", "constants"]
