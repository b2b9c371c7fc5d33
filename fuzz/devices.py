"""The real device models, made once per fuzz process with what the VMM would give them.

Host-side stand-ins are the only fakes: a datagram socketpair for the TAP (one frame per
datagram, both directions, like a TAP's fd), a temporary backing file, a temporary
directory for the vsock Unix sockets, and `nodesvc.testing.FakeLimiter` budgets the
input chooses. Import inside `fuzz.common.instrumented()`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile

from nodesvc.mmds import Mmds, MmdsStack
from nodesvc.testing import FakeLimiter
from nodesvc_virtio_blk import VirtioBlock, parse_drive
from nodesvc_virtio_net.device import VirtioNet
from nodesvc_virtio_rng.device import VirtioRng
from nodesvc_vsock.device import VsockDevice

# tmpfs when there is one: the writeback drive's FLUSH is an fdatasync
_TMP = tempfile.mkdtemp(prefix="nodesvc-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else "/tmp")
atexit.register(shutil.rmtree, _TMP, True)

DISK_SECTORS = 64
GUEST_CID = 3
HOST_PORT = 1234            # a host service the guest may connect to (`<uds>_1234`)


def blk(loop, *, read_only: bool = False, writeback: bool = False, limiter=None) -> VirtioBlock:
    path = os.path.join(_TMP, f"disk-{'ro' if read_only else 'rw'}-{len(os.listdir(_TMP))}.img")
    with open(path, "wb") as f:
        f.write(bytes(range(256)) * (DISK_SECTORS * 2))
    drive = parse_drive({"drive_id": "fuzz", "path_on_host": path, "is_root_device": False,
                         "is_read_only": read_only,
                         "cache_type": "Writeback" if writeback else "Unsafe"})
    return VirtioBlock(drive, limiter=limiter, event_loop=loop)


class FakeTap:
    """The device's end of a SOCK_DGRAM socketpair; `host` is the kernel's end."""

    def __init__(self) -> None:
        self.host, self._dev = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (self.host, self._dev):
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.fd = self._dev.fileno()
        self.offload = 0

    def set_offload(self, flags: int) -> None:
        self.offload = flags

    def drain(self) -> int:
        """Frames the device wrote (TX), read and dropped; also empties frames the
        host sent that the device never read (RX), so inputs start clean."""
        n = 0
        for s in (self.host, self._dev):
            while True:
                try:
                    s.recv(1 << 17)
                except BlockingIOError:
                    break
                n += s is self.host
        return n

    def close(self) -> None:
        self.host.close()
        self._dev.close()


class Clock:
    """A monotonic clock the input moves forward (MMDS retransmission timers)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


MMDS_DOC = {"latest": {"meta-data": {"instance-id": "i-fuzz", "ami-id": "ami-1",
                                     "tags": {"a": "b" * 40, "n": ["x", "y"]},
                                     "big": "z" * 3000}}}


def mmds(clock=None, version: str = "V1") -> Mmds:
    m = Mmds(version=version, clock=clock or Clock())
    m.put(MMDS_DOC)
    return m


def net(loop, *, mmds_stack=None, rx_limiter=None, tx_limiter=None, mtu=None):
    tap = FakeTap()
    dev = VirtioNet(tap, loop, mac=bytes.fromhex("020000000002"), mtu=mtu,
                    rx_limiter=rx_limiter, tx_limiter=tx_limiter, mmds_stack=mmds_stack)
    return dev, tap


def net_with_mmds(loop, clock: Clock):
    service = mmds(clock)
    return net(loop, mmds_stack=lambda: MmdsStack(service, clock=clock))


def vsock(loop):
    path = os.path.join(_TMP, f"v{len(os.listdir(_TMP))}.sock")
    dev = VsockDevice(GUEST_CID, path, loop)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    listener.bind(f"{path}_{HOST_PORT}")
    listener.listen(1024)
    return dev, path, listener


def rng(loop, limiter=None) -> VirtioRng:
    return VirtioRng(limiter=limiter, event_loop=loop)


def limiter(inp) -> FakeLimiter | None:
    """None (unlimited) most of the time, else small fuzz-chosen budgets."""
    if inp.u8() < 200:
        return None
    return FakeLimiter(ops=inp.int_in(0, 8) if inp.flag() else None,
                       nbytes=inp.int_in(0, 1 << 14) if inp.flag() else None)
