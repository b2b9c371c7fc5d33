"""nodesvc-virtio-blk: a file-backed virtio-blk device, registered as device kind "virtio-blk".

Config is one entry of Firecracker's `drives[]` (see `config.py`); the device model
is in `device.py`, the lean virtqueue access it uses in `ring.py`.
"""

from .config import DriveConfig, parse_drive
from .device import VirtioBlock

__all__ = ["DriveConfig", "VirtioBlock", "parse_drive"]
