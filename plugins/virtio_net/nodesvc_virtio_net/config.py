"""The `network-interfaces[]` object (Firecracker's, plus `netns` and `mtu`), parsed strictly.

    {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02",
     "rx_rate_limiter": {...}, "tx_rate_limiter": {...},
     "netns": "vm0",          # nodesvc: namespace (name or path) the TAP lives in
     "mtu": 1500}             # nodesvc: offered to the guest with VIRTIO_NET_F_MTU
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from nodesvc.net.tap import check_ifname
from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.ratelimit import parse_limiter_config

KEYS = ("iface_id", "host_dev_name", "guest_mac", "rx_rate_limiter", "tx_rate_limiter",
        "netns", "mtu")
MTU_MIN, MTU_MAX = 68, 65535  # IPv4 minimum; the config field is a u16
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


@dataclass(frozen=True)
class NetConfig:
    iface_id: str
    host_dev_name: str
    guest_mac: bytes | None = None
    rx_rate_limiter: Mapping[str, Any] | None = None
    tx_rate_limiter: Mapping[str, Any] | None = None
    netns: str | None = None
    mtu: int | None = None


def parse_mac(text: Any, path: str = "guest_mac") -> bytes:
    if not isinstance(text, str) or not _MAC.match(text):
        raise ConfigError(f"{path}: must be a MAC address like 06:00:ac:10:00:02, got {text!r}")
    mac = bytes(int(part, 16) for part in text.split(":"))
    if mac[0] & 1:  # the guest would answer for a group address: traffic breaks oddly
        raise ConfigError(f"{path}: {text} is a multicast/broadcast address; use a unicast one")
    if mac == bytes(6):
        raise ConfigError(f"{path}: 00:00:00:00:00:00 is not a usable address")
    return mac


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def _string(path: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{path}: must be a non-empty string, got {v!r}")
    return v


def parse(config: Any) -> NetConfig:
    """Validate one interface object; every problem is one ConfigError line naming the field."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"network-interfaces[]: must be an object, got {type(config).__name__}")
    where = f"network-interfaces[{config.get('iface_id', '?')}]"
    for key in config:
        if key not in KEYS:
            raise ConfigError(f"{where}.{key}: unknown key; allowed: {', '.join(KEYS)}")
    for key in ("iface_id", "host_dev_name"):
        if key not in config:
            raise ConfigError(f"{where}.{key}: required key is missing")
    iface_id = _string(f"{where}.iface_id", config["iface_id"])
    tap = _string(f"{where}.host_dev_name", config["host_dev_name"])
    try:
        check_ifname(tap)
    except ValueError as e:
        raise ConfigError(f"{where}.host_dev_name: {e}") from None
    mac = config.get("guest_mac")
    mac = None if mac is None else parse_mac(mac, f"{where}.guest_mac")
    netns = config.get("netns")
    if netns is not None:
        netns = _string(f"{where}.netns", netns)
        if "/" not in netns and netns in (".", ".."):
            raise ConfigError(f"{where}.netns: {netns!r} is not a namespace name")
    mtu = config.get("mtu")
    if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool)
                            or not MTU_MIN <= mtu <= MTU_MAX):
        raise ConfigError(f"{where}.mtu: must be an integer {MTU_MIN}..{MTU_MAX}, got {mtu!r}")
    limiters = {k: parse_limiter_config(config.get(k), f"{where}.{k}") or None
                for k in ("rx_rate_limiter", "tx_rate_limiter")}
    return NetConfig(iface_id, tap, mac, limiters["rx_rate_limiter"],
                     limiters["tx_rate_limiter"], netns, mtu)
