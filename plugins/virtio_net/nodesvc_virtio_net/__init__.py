"""nodesvc-virtio-net: virtio-net over a TAP (IFF_VNET_HDR), registered as device kind "virtio-net"."""

from .config import NetConfig, parse as parse_config
from .device import NetStats, VirtioNet

__all__ = ["NetConfig", "NetStats", "VirtioNet", "parse_config"]
