"""Exceptions raised by the VMM core. One place, so callers can map them."""


class VmmError(Exception):
    """Base class for every error the VMM reports."""


class ConfigError(VmmError):
    """The VM configuration is invalid; raised before any KVM state exists."""


class GuestMemoryError(VmmError):
    """A guest physical address range is outside guest memory."""


class KvmError(VmmError):
    """An ioctl on /dev/kvm or one of its fds failed."""

    def __init__(self, op: str, errno: int, message: str):
        self.op = op
        self.errno = errno
        super().__init__(f"{op} failed: [errno {errno}] {message}")


class DeviceError(VmmError):
    """A device detected a fatal condition (e.g. a hostile guest request it cannot survive)."""
