"""Open an existing TAP interface through /dev/net/tun, the way a VMM uses one.

The fd is non-blocking and carries `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`: every
frame read or written is preceded by a 12-byte `virtio_net_hdr_v1`, so a
virtio-net device can pass guest buffers straight through with readv/writev.
TUNSETIFF resolves the name in the *calling thread's* network namespace; for a
TAP that lives in another netns, `open_tap(name, netns=...)` does the ioctl from
a thread that has joined that namespace (the fd keeps working from anywhere).
"""

from __future__ import annotations

import fcntl
import os
import struct

from ..vmm import hostfiles
from .nsenter import run_in_netns

# <linux/if_tun.h> ioctls (_IOW('T', nr, int)) and flags
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
# TUNSETOFFLOAD flags: which GSO/checksum kinds the fd's *reader* (the guest) accepts
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO = 0x01, 0x02, 0x04, 0x08, 0x10

IFNAMSIZ = 16
VNET_HDR_LEN = 12  # struct virtio_net_hdr_v1 (with num_buffers)


class TapError(OSError):
    """A TAP could not be opened or configured (message names the interface and the step)."""


def check_ifname(name: str) -> str:
    """Linux interface-name rules: 1..15 bytes, no '/', ':' or whitespace."""
    if not isinstance(name, str) or not name:
        raise ValueError("interface name must be a non-empty string")
    raw = name.encode("utf-8", "replace")
    if len(raw) >= IFNAMSIZ:
        raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ - 1} bytes")
    if name in (".", "..") or any(c in name for c in "/: \t\n\x00"):
        raise ValueError(f"interface name {name!r} contains a character Linux refuses")
    return name


def _ifreq(name: str, flags: int) -> bytes:
    return struct.pack("16sH22x", name.encode(), flags)


class Tap:
    """An open TAP queue. `fd` is non-blocking; close() (or `with`) releases it."""

    def __init__(self, fd: int, name: str, vnet_hdr_len: int):
        self.fd, self.name, self.vnet_hdr_len = fd, name, vnet_hdr_len

    @classmethod
    def open(cls, name: str, *, vnet_hdr: bool = True, offload: int = 0) -> "Tap":
        """Attach to TAP `name` in the calling thread's netns (created if absent, not persistent)."""
        check_ifname(name)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise TapError(e.errno, f"cannot open /dev/net/tun for {name}: {e.strerror}") from None
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        tap = cls(fd, name, VNET_HDR_LEN if vnet_hdr else 0)
        try:
            fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, flags))
        except OSError as e:
            os.close(fd)
            # EBUSY: another fd holds it (a TAP has one owner unless multi-queue);
            # EPERM: TUNSETOWNER gave it to another uid
            raise TapError(e.errno, f"TUNSETIFF {name}: {e.strerror}") from None
        return tap._configure(vnet_hdr, offload)

    def _configure(self, vnet_hdr: bool, offload: int) -> "Tap":
        try:
            if vnet_hdr:
                self.set_vnet_hdr_len(VNET_HDR_LEN)
                self.set_offload(offload)
        except OSError:
            self.close()
            raise
        return self

    def set_vnet_hdr_len(self, n: int) -> None:
        try:
            fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", n))
        except OSError as e:
            raise TapError(e.errno, f"TUNSETVNETHDRSZ {self.name} {n}: {e.strerror}") from None
        self.vnet_hdr_len = n

    def set_offload(self, flags: int) -> None:
        """Tell the kernel which partial-checksum/GSO frames the reader can take (TUN_F_*)."""
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
        except OSError as e:
            raise TapError(e.errno, f"TUNSETOFFLOAD {self.name} {flags:#x}: {e.strerror}") from None

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Tap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Tap({self.name!r}, fd={self.fd})"


def open_tap(name: str, netns: str | None = None, *, vnet_hdr: bool = True,
             offload: int = 0) -> Tap:
    """Open TAP `name`, joining network namespace `netns` (name or path) for the ioctl."""
    handed = hostfiles.take(hostfiles.tap_key(netns, name))
    if handed is not None:     # jailed: the node attached it (TUNSETIFF) and handed it in
        return Tap(handed, name, 0)._configure(vnet_hdr, offload)
    if netns is None:
        return Tap.open(name, vnet_hdr=vnet_hdr, offload=offload)
    return run_in_netns(netns, Tap.open, name, vnet_hdr=vnet_hdr, offload=offload)
