"""The virtio-blk device model: one request queue over a host file, synchronous I/O.

Request layout (virtio 1.x §5.2.6): a 16-byte header (type u32, reserved u32,
sector u64) at the start of the device-readable bytes; data; and a status byte,
the last device-writable byte. Data moves with preadv/pwritev straight between
the file and memoryviews of guest buffers — no copies. Requests on one kick are
handled in a batch and the driver gets one interrupt for the lot.

Malformed requests: if the chain has a status byte the request completes with
VIRTIO_BLK_S_IOERR (short header, bad length, out-of-range sector); without one
nothing can be reported, so the queue fails (NEEDS_RESET via VirtqueueError).
"""

from __future__ import annotations

import logging
import os
import struct
import threading

from nodesvc.vmm import hostfiles
from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.ratelimit import OneLimiter
from nodesvc.vmm.snapshot.devices import limiter_state, restore_limiter
from nodesvc.vmm.virtio import VirtioDevice, VirtqueueError
from nodesvc.vmm.virtio.constants import ID_BLOCK
from nodesvc.vmm.virtio.ring import FastRing, gather, scatter, skip

log = logging.getLogger("nodesvc.virtio_blk")

QUEUE_SIZE = 256
SECTOR_SHIFT = 9
ID_BYTES = 20
# Feature bits (virtio 1.x §5.2.3). SEG_MAX lets Linux put many pages in one request
# (without it every request is a single segment); QEMU uses queue size - 2 too.
F_SEG_MAX, F_RO, F_FLUSH = 1 << 2, 1 << 5, 1 << 9
SEG_MAX = QUEUE_SIZE - 2
T_IN, T_OUT, T_FLUSH, T_GET_ID = 0, 1, 4, 8
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2

_HEADER = struct.Struct("<IIQ")
_CONFIG = struct.Struct("<QII")      # capacity, size_max, seg_max (spec layout prefix)
_HEADER_LEN = _HEADER.size
_unpack_header, _preadv, _pwritev = _HEADER.unpack_from, os.preadv, os.pwritev


def open_backing(path: str, read_only: bool) -> tuple[int, int]:
    """(fd, capacity in sectors). A tail shorter than a sector is not exposed (as Firecracker)."""
    try:
        fd = hostfiles.open_fd(path, os.O_RDONLY if read_only else os.O_RDWR)
    except OSError as e:
        raise ConfigError(f"cannot open backing file {path!r}: {e.strerror}") from None
    size = os.lseek(fd, 0, os.SEEK_END)   # works for block devices too
    if size % 512:
        log.warning("%s: size %d is not a multiple of 512; the last %d bytes are not visible",
                    path, size, size % 512)
    return fd, size >> SECTOR_SHIFT


class VirtioBlock(OneLimiter, VirtioDevice):
    device_id = ID_BLOCK
    queue_sizes = (QUEUE_SIZE,)

    def __init__(self, drive, *, limiter=None, limiter_builder=None, event_loop=None):
        super().__init__()
        self.drive, self.path = drive, drive.path_on_host
        self.read_only = drive.is_read_only
        self.writeback = drive.cache_type == "Writeback"
        self.features = F_SEG_MAX | (F_RO if self.read_only else 0) | (F_FLUSH if self.writeback else 0)
        self._fd, self.capacity = open_backing(self.path, self.read_only)
        self._config = _CONFIG.pack(self.capacity, 0, SEG_MAX)
        self._id = drive.drive_id.encode()[:ID_BYTES].ljust(ID_BYTES, b"\0")
        self._lock = threading.Lock()   # request processing vs. hot-swap from other threads
        self._ring: FastRing | None = None
        self._broken = False
        self._limiter_owner = f"drives[{drive.drive_id}]"
        self._one_limiter = "a drive has"
        self._init_limiter(limiter, limiter_builder, event_loop)

    # -- virtio device contract -----------------------------------------------------------
    def config_bytes(self) -> bytes:
        return self._config

    def activate(self, queues, interrupt) -> None:
        super().activate(queues, interrupt)
        q = queues[0]
        self._ring = FastRing(q, q.memory) if q.ready else None
        self._broken = False

    def reset(self) -> None:
        self._ring, self._broken = None, False
        super().reset()

    def close(self) -> None:
        self._ring = None
        if self.limiter is not None:
            self.limiter.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def queue_notify(self, index: int) -> None:
        ring, interrupt = self._ring, self.interrupt   # a reset may clear them meanwhile
        if index != 0 or ring is None or self._broken:
            return
        with self._lock:
            self._process(ring, interrupt)

    # -- request processing -----------------------------------------------------------------
    def _process(self, ring: FastRing, interrupt) -> None:
        done = 0
        pop, handle, add_used = ring.pop, self._handle, ring.add_used
        try:
            # A driver reset (vCPU thread) drops self._ring: stop touching the old rings.
            while self._ring is ring and (chain := pop()) is not None:
                written = handle(ring, chain[1], chain[2])
                if written < 0:        # throttled: leave it for the limiter's wake-up
                    ring.undo_pop()
                    break
                add_used(chain[0], written)
                done += 1
        except VirtqueueError:
            self._broken = True
            raise
        finally:
            if done:
                interrupt.signal_used(ring.q)

    def _handle(self, ring: FastRing, rd: list, wr: list) -> int:
        """Do one request; return the bytes written to the chain (-1: throttled).

        Kept flat on purpose: it runs once per request, and every call or attribute
        lookup here costs a few percent of the 4 KiB IOPS figure.
        """
        ram, end = ring.ram, ring.ram_end
        if wr and wr[-1][1] == 1:               # Linux: a 1-byte status buffer last
            status_addr, data = wr[-1][0], wr[:-1]
        else:
            status_addr, data = _split_status(wr)
        if rd and rd[0][1] >= _HEADER_LEN and rd[0][0] + _HEADER_LEN <= end:
            rtype, _, sector = _unpack_header(ram, rd[0][0])
        else:
            head = gather(ring, rd, _HEADER_LEN)   # a split or short header: rare
            if len(head) < _HEADER_LEN:
                return _status(ring, status_addr, S_IOERR, 0)
            rtype, _, sector = _HEADER.unpack(head)

        if rtype == T_IN:
            nbytes = data[0][1] if len(data) == 1 else sum(b[1] for b in data)
            if nbytes & 511 or sector + (nbytes >> SECTOR_SHIFT) > self.capacity:
                return _status(ring, status_addr, S_IOERR, 0)
            if self.limiter is not None and not self._consume(nbytes):
                return -1
            if len(data) == 1 and data[0][0] + nbytes <= end:   # one buffer: skip views()
                bufs = [ram[data[0][0]:data[0][0] + nbytes]]
            else:
                bufs = ring.views(data)
            try:
                got = _preadv(self._fd, bufs, sector << SECTOR_SHIFT) if data else 0
            except OSError:
                return _status(ring, status_addr, S_IOERR, 0)
            if status_addr < end:
                ram[status_addr] = S_OK if got == nbytes else S_IOERR
                return got + 1
            return _status(ring, status_addr, S_OK if got == nbytes else S_IOERR, got)
        if rtype == T_OUT:
            data = skip(rd, _HEADER_LEN)
            nbytes = sum(b[1] for b in data)
            if self.read_only or nbytes & 511 or sector + (nbytes >> SECTOR_SHIFT) > self.capacity:
                return _status(ring, status_addr, S_IOERR, 0)
            if self.limiter is not None and not self._consume(nbytes):
                return -1
            try:
                put = _pwritev(self._fd, ring.views(data), sector << SECTOR_SHIFT) if data else 0
            except OSError:
                put = -1
            return _status(ring, status_addr, S_OK if put == nbytes else S_IOERR, 0)
        if self.limiter is not None and not self._consume(0):
            return -1
        if rtype == T_FLUSH:
            try:
                if self.writeback:   # Unsafe: the host page cache is good enough, by contract
                    os.fdatasync(self._fd)
            except OSError:
                return _status(ring, status_addr, S_IOERR, 0)
            return _status(ring, status_addr, S_OK, 0)
        if rtype == T_GET_ID:
            if sum(b[1] for b in data) < ID_BYTES:
                return _status(ring, status_addr, S_IOERR, 0)
            scatter(ring.views(data), self._id)
            return _status(ring, status_addr, S_OK, ID_BYTES)
        return _status(ring, status_addr, S_UNSUPP, 0)

    # -- rate limiter (OneLimiter: Firecracker charges data bytes for IN/OUT only) ------------
    def _resumable(self) -> bool:
        return self._ring is not None and not self._broken

    # -- snapshots (nodesvc.vmm.snapshot) -------------------------------------------------
    def save_state(self) -> dict:
        """What the guest's driver relies on: the capacity it read (the drive is reopened
        by path and must still be that size) and the limiter's buckets. Requests are done
        synchronously, so none is in flight; a throttled one is still on the ring."""
        return {"drive_id": self.drive.drive_id, "capacity": self.capacity,
                "read_only": self.read_only, "broken": self._broken,
                "limiter": limiter_state(self.limiter)}

    def check_state(self, state: dict) -> None:
        """Before anything runs (a mismatch refuses the restore): same size, same mode."""
        if state["capacity"] != self.capacity:
            raise ValueError(f"drive {state['drive_id']}: the snapshot's guest saw "
                             f"{state['capacity']} sectors, {self.path} now has "
                             f"{self.capacity}")
        if bool(state["read_only"]) != self.read_only:
            raise ValueError(f"drive {state['drive_id']}: read-only was "
                             f"{bool(state['read_only'])} in the snapshot")

    def restore_state(self, state: dict) -> None:
        """Event-loop thread, after activation on the restored queue."""
        self._broken = bool(state["broken"])
        restore_limiter(self.limiter, state["limiter"])

    # -- hot swap ---------------------------------------------------------------------------
    def update_backing_file(self, path: str) -> None:
        """Swap the backing file on a running VM and announce the new capacity."""
        fd, capacity = open_backing(path, self.read_only)
        with self._lock:      # never swap under an in-flight batch
            old, self._fd, self.path, self.capacity = self._fd, fd, path, capacity
            self._config = _CONFIG.pack(capacity, 0, SEG_MAX)
        if old >= 0:
            os.close(old)
        if self.interrupt is not None:
            self.interrupt.signal_config()


def _status(ring: FastRing, addr: int, status: int, data_written: int) -> int:
    """Write the status byte; return the used length (data + the status byte)."""
    ring.put_u8(addr, status)
    return data_written + 1


def _split_status(wr: list) -> tuple[int, list]:
    """(status byte address, data buffers): the status is the last writable byte."""
    while wr and wr[-1][1] == 0:   # zero-length buffers hold nothing, not even a status
        wr = wr[:-1]
    if not wr:   # nothing to report an error in: the queue fails (NEEDS_RESET)
        raise VirtqueueError("virtio-blk request has no status byte")
    addr, n = wr[-1]
    return addr + n - 1, wr[:-1] + ([(addr, n - 1)] if n > 1 else [])
