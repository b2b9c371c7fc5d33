"""nodesvc-vsock: virtio-vsock (device id 19) with Firecracker's hybrid Unix-socket host side."""

from .device import VsockDevice
from .plugin import KIND, validate

__all__ = ["VsockDevice", "KIND", "validate"]
