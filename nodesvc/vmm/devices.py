"""The device manager: every attached device under a stable id `(kind, id)`.

Ids come from the device's own configuration (drive_id, iface_id) or are fixed per
kind ("vsock", "entropy", "serial", ...), so they are the same on every build of the
same config: live updates, tracing, status and snapshots name devices by them.
Capabilities are looked up by Protocol (nodesvc.vmm.capabilities), never by
attribute probing.
"""

from __future__ import annotations

import logging
from typing import Iterator, NamedTuple

from .capabilities import Closeable
from .errors import ConfigError

log = logging.getLogger("nodesvc.vmm.devices")


class DeviceId(NamedTuple):
    kind: str
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


class DeviceNotFound(LookupError):
    pass


class DeviceManager:
    """Attach order is kept: it is the order the guest discovers devices in."""

    def __init__(self) -> None:
        self._devices: dict[DeviceId, object] = {}
        self._closed = False

    def add(self, kind: str, device_id: str, device: object) -> DeviceId:
        key = DeviceId(kind, device_id)
        if key in self._devices:
            raise ConfigError(f"{kind} {device_id!r}: a device with this id is already attached")
        self._devices[key] = device
        return key

    def get(self, kind: str, device_id: str) -> object:
        try:
            return self._devices[DeviceId(kind, device_id)]
        except KeyError:
            have = ", ".join(str(k) for k in self._devices if k.kind == kind) or "none"
            raise DeviceNotFound(f"no {kind} device {device_id!r} (attached: {have})") from None

    def find(self, cap: type) -> object | None:
        """The first device (in attach order) implementing capability `cap`."""
        return next((d for d in self._devices.values() if isinstance(d, cap)), None)

    def of(self, cap: type | None = None) -> list[tuple[DeviceId, object]]:
        return [(k, d) for k, d in self._devices.items() if cap is None or isinstance(d, cap)]

    def values(self) -> list[object]:
        return list(self._devices.values())

    def ids(self) -> list[DeviceId]:
        return list(self._devices)

    def __iter__(self) -> Iterator[tuple[DeviceId, object]]:
        return iter(list(self._devices.items()))

    def __len__(self) -> int:
        return len(self._devices)

    def __contains__(self, key) -> bool:
        return DeviceId(*key) in self._devices

    def close(self) -> None:
        """Close every device once, in reverse attach order. They stay listed (their
        figures remain readable after the VM ended)."""
        if self._closed:
            return
        self._closed = True
        for key, dev in reversed(list(self._devices.items())):
            if isinstance(dev, Closeable):
                try:
                    dev.close()
                except Exception:
                    log.exception("closing %s failed", key)
