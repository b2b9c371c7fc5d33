"""Firecracker's `mmds-config` section, parsed strictly (`vmm_config/mmds.rs`).

    "mmds-config": {"version": "V2",                      # default "V1"
                    "network_interfaces": ["eth0"],        # required, non-empty
                    "ipv4_address": "169.254.169.254",     # default; any 169.254.0.0/16
                    "imds_compat": false}                  # default false

Whether each `network_interfaces` id names a configured interface is for the VM
config (it knows the interfaces) to check; `check_interfaces` does it given the ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from nodesvc.vmm.errors import ConfigError

from .service import V1, V2
from .stack import DEFAULT_IPV4, check_ipv4_address

KEYS = ("version", "network_interfaces", "ipv4_address", "imds_compat")


@dataclass(frozen=True)
class MmdsConfig:
    network_interfaces: tuple[str, ...]
    version: str = V1
    ipv4_address: str = DEFAULT_IPV4
    imds_compat: bool = False


def parse(config: Any, where: str = "mmds-config") -> MmdsConfig:
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: must be an object, got {type(config).__name__}")
    for key in config:
        if key not in KEYS:
            raise ConfigError(f"{where}.{key}: unknown key; allowed: {', '.join(KEYS)}")
    version = config.get("version", V1)
    if version not in (V1, V2):
        raise ConfigError(f"{where}.version: must be \"V1\" or \"V2\", got {version!r}")
    ifaces = config.get("network_interfaces")
    if ifaces is None:
        raise ConfigError(f"{where}.network_interfaces: required key is missing")
    if not isinstance(ifaces, list) or not all(isinstance(i, str) and i for i in ifaces):
        raise ConfigError(f"{where}.network_interfaces: must be a list of interface ids")
    if not ifaces:
        raise ConfigError(f"{where}.network_interfaces: the list of network interface IDs "
                          f"that allow forwarding MMDS requests is empty")
    ip = config.get("ipv4_address")
    try:
        ip = DEFAULT_IPV4 if ip is None else check_ipv4_address(ip)
    except ValueError as e:
        raise ConfigError(f"{where}.ipv4_address: {e}") from None
    compat = config.get("imds_compat", False)
    if not isinstance(compat, bool):
        raise ConfigError(f"{where}.imds_compat: must be true or false, got {compat!r}")
    return MmdsConfig(tuple(dict.fromkeys(ifaces)), version, ip, compat)


def check_interfaces(cfg: MmdsConfig, iface_ids: Iterable[str],
                     where: str = "mmds-config") -> None:
    known = set(iface_ids)
    missing = [i for i in cfg.network_interfaces if i not in known]
    if missing:
        raise ConfigError(f"{where}.network_interfaces: {', '.join(missing)} is not a "
                          f"configured network interface (have: {', '.join(sorted(known)) or 'none'})")
