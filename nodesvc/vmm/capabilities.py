"""What a device can do for the VMM beyond bus accesses: small runtime-checkable Protocols.

The VMM finds devices by capability (`DeviceManager.find(Console)`) instead of probing
attribute names, so a plugin opts in by implementing the methods and nothing else. All
of these are called outside hot paths (control requests, start-up, tear-down).
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable


@runtime_checkable
class Console(Protocol):
    def console_input(self, data: bytes) -> int | None:
        """Queue keystrokes for the guest; returns how many bytes were taken."""


@runtime_checkable
class PowerButton(Protocol):
    def send_ctrl_alt_del(self) -> bool:
        """Ask the guest to shut down; False when the request could not be queued."""


@runtime_checkable
class BootClock(Protocol):
    """Firecracker's boot timer: `boot_time` (seconds) once the guest said "booted"."""
    boot_time: float | None
    start: float

    def wait(self, timeout: float | None = None) -> float | None:
        """Block until the guest signals boot (or timeout); return `boot_time`."""


@runtime_checkable
class Drive(Protocol):
    def update_backing_file(self, path: str) -> None:
        """Swap the backing file on a running VM (Firecracker's PATCH /drives)."""


@runtime_checkable
class RateLimited(Protocol):
    def update_rate_limiter(self, config: Mapping[str, Any] | None,
                            which: str | None = None) -> None:
        """Adjust or add a limiter on a running VM; `which` picks one of several
        ("rx"/"tx" on a net device), None the only one."""


@runtime_checkable
class Closeable(Protocol):
    def close(self) -> None:
        """Release the device's fds when the VM ends (called once)."""
