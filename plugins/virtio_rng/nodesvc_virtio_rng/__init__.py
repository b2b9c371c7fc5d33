"""nodesvc-virtio-rng: virtio entropy device (id 4), registered as device kind "virtio-rng"."""

from .device import VirtioRng

__all__ = ["VirtioRng"]
