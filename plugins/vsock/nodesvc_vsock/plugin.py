"""Plugin glue: device kind "vsock" (entry point `vsock`), configured like Firecracker's
`vsock` object: {"guest_cid": 3, "uds_path": "/run/vm.sock", "vsock_id": "vsock0"}."""

from __future__ import annotations

import os
import stat
from typing import Any, Mapping

from nodesvc.plugins import device_hook
from nodesvc.vmm import hostfiles
from nodesvc.vmm.device import DeviceKind
from nodesvc.vmm.errors import ConfigError

from .device import VsockDevice

KIND = "vsock"
ALLOWED = ("guest_cid", "uds_path", "vsock_id")
MAX_CID = 0xFFFF_FFFF - 1   # sockaddr_vm.svm_cid is u32 and U32_MAX means "any"
SUN_PATH_MAX = 107          # sockaddr_un.sun_path minus the terminating NUL


def _show(v: Any) -> str:
    return f"{type(v).__name__} {v!r}"


def validate(config: Mapping[str, Any] | None) -> None:
    """Refuse a bad `vsock` object with one clear line (runs before any KVM state exists)."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"vsock: must be an object, got {_show(config)}")
    for key in config:
        if key not in ALLOWED:
            raise ConfigError(f"vsock.{key}: unknown key; allowed: {', '.join(ALLOWED)}")
    for key in ("guest_cid", "uds_path"):
        if key not in config:
            raise ConfigError(f"vsock.{key}: required key is missing")
    cid = config["guest_cid"]
    if not isinstance(cid, int) or isinstance(cid, bool) or not 3 <= cid <= MAX_CID:
        raise ConfigError(f"vsock.guest_cid: must be an integer from 3 to {MAX_CID} "
                          f"(0-2 are reserved, 2 is the host), got {_show(cid)}")
    path = config["uds_path"]
    if not isinstance(path, str) or not path:
        raise ConfigError(f"vsock.uds_path: must be a non-empty string, got {_show(path)}")
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise ConfigError(f"vsock.uds_path: longer than {SUN_PATH_MAX} bytes, "
                          f"the limit for a Unix socket path")
    parent = os.path.dirname(os.path.abspath(path))
    # exec mode validates jailed: the host dir is not there, the socket's place in /run is
    seen = path if os.path.isdir(parent) else hostfiles.visible_path(path)
    if not os.path.isdir(os.path.dirname(os.path.abspath(seen))):
        raise ConfigError(f"vsock.uds_path: directory {parent} does not exist")
    # (followed: jailed, the path is a link to the socket the VMM makes in its jail)
    if os.path.exists(seen) and not stat.S_ISSOCK(os.stat(seen).st_mode):
        raise ConfigError(f"vsock.uds_path: {path} exists and is not a socket")
    vid = config.get("vsock_id")
    if vid is not None and not isinstance(vid, str):
        raise ConfigError(f"vsock.vsock_id: must be a string, got {_show(vid)}")


class VsockKind(DeviceKind):
    """One per VM, id "vsock" (Firecracker's `vsock_id` is only a label)."""
    kind = KIND
    validate = staticmethod(validate)

    @classmethod
    def attach(cls, ctx, config: Mapping[str, Any]) -> VsockDevice:
        """Listen on `uds_path` and plug the device into a virtio-mmio slot (the config
        was validated in the device plan, before any jail)."""
        try:
            # jailed, the socket lives in the jail's run dir (uds_path links to it)
            dev = VsockDevice(config["guest_cid"], hostfiles.visible_path(config["uds_path"]),
                              ctx.event_loop)
        except OSError as e:
            raise ConfigError(f"vsock.uds_path: cannot listen on {config['uds_path']}: "
                              f"{e.strerror or e}") from None
        dev.transport = ctx.add_virtio_device(dev, config.get("vsock_id") or KIND)
        return dev


attach = VsockKind.attach

register_devices = device_hook(VsockKind)
