"""virtio-blk device-model benchmark: one core, in-process driver, file on tmpfs.

    .venv/bin/python bench/virtio_blk.py [--runs 5] [--seconds 1] [--depth 64]

The driver lays requests out in guest memory the way a guest does, but cheaply:
the descriptor chains (header, data, status) are written once; each round it
only sets the headers' sectors, puts `depth` heads in the available ring, bumps
its index, kicks (the device runs synchronously, as on its event-loop thread)
and reads back the used ring. So the figures are the device model's cost, not
an emulated guest's. Next to each figure is the bare-syscall baseline measured
in the same run: an `os.preadv` loop over the same file, offsets, sizes and guest
buffers. Medians of `--runs` interleaved runs; rates are per second of this
thread's CPU time (`--wall` for wall-clock), so a busy shared host does not
count other processes' time against the device. `+us/req` is the device model's
cost on top of the syscall.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import struct
import sys
import time

from nodesvc.vmm.memory import GuestMemory
from nodesvc.vmm.virtio import VirtioMmioTransport, constants as V
from nodesvc.testing import CountingIrq, GuestDriver
from nodesvc.vmm.virtio.queue import _DESC
from nodesvc_virtio_blk import VirtioBlock, parse_drive

HDR = struct.Struct("<IIQ")
FILE_MIB = 256


class Loop:
    def call_soon(self, fn):
        fn()


class Bench:
    """`depth` prebuilt IN chains of `size` bytes (in `segs` data descriptors each).

    `indirect`: each chain is one ring descriptor pointing at a table of its buffers,
    which is what Linux sends for every multi-buffer request once INDIRECT_DESC is
    negotiated; otherwise the buffers are chained directly in the ring.
    """

    def __init__(self, path: str, size: int, depth: int, segs: int = 1, indirect: bool = True):
        self.size, self.depth = size, depth
        self.mem = GuestMemory(64 << 20)
        self.dev = VirtioBlock(parse_drive({"drive_id": "bench", "path_on_host": path,
                                            "is_root_device": False}))
        self.t = VirtioMmioTransport(self.dev, memory=self.mem, irq=CountingIrq(), event_loop=Loop())
        drv = GuestDriver(self.t, self.mem)
        drv.init(drop=0)   # every offered feature, EVENT_IDX included, as Linux negotiates
        self.q = q = drv.queues[0]
        ram = self.ram = self.mem.regions[0].view
        self.heads, self.hdrs, self.bufs = [], [], []
        seg, n = size // segs, 2 + segs
        if not indirect and depth * n > q.size:
            raise ValueError(f"{depth} direct chains of {n} descriptors exceed the ring")
        for i in range(depth):
            hdr, data, st = drv.alloc(16), drv.alloc(size, 4096), drv.alloc(1)
            HDR.pack_into(ram, hdr, 0, 0, 0)
            bufs = [(hdr, 16, 0)] + [(data + k * seg, seg, V.DESC_F_WRITE) for k in range(segs)]
            bufs.append((st, 1, V.DESC_F_WRITE))
            table, first = (drv.alloc(16 * n), 0) if indirect else (q.desc, i * n)
            for k, (addr, ln, fl) in enumerate(bufs):
                more = k + 1 < n
                _DESC.pack_into(ram, table + 16 * (first + k), addr, ln,
                                fl | (V.DESC_F_NEXT if more else 0), first + k + 1 if more else 0)
            if indirect:
                _DESC.pack_into(ram, q.desc + 16 * i, table, 16 * n, V.DESC_F_INDIRECT, 0)
            self.heads.append(i if indirect else first)
            self.hdrs.append(hdr)
            self.bufs.append(data)
        self.avail_idx = self.used_idx = 0
        self._heads = struct.Struct(f"<{depth}H")

    def round(self, sectors) -> None:
        ram, q, d = self.ram, self.q, self.depth
        for hdr, sector in zip(self.hdrs, sectors):
            HDR.pack_into(ram, hdr, 0, 0, sector)
        slot = self.avail_idx % q.size   # depth divides the ring size: no wrap inside a round
        self._heads.pack_into(ram, q.avail + 4 + 2 * slot, *self.heads)
        self.avail_idx = (self.avail_idx + d) & 0xFFFF
        struct.pack_into("<H", ram, q.avail + 2, self.avail_idx)
        self.t.process_notify(0)
        used = struct.unpack_from("<H", ram, q.used + 2)[0]
        if (used - self.used_idx) & 0xFFFF != d:
            raise RuntimeError(f"device completed {(used - self.used_idx) & 0xFFFF} of {d}")
        self.used_idx = used

    def close(self) -> None:
        self.t.close()
        self.t.device.close()
        self.mem.close()


def offsets(kind: str, size: int, count: int, rng: random.Random) -> list[int]:
    """Sector numbers: random size-aligned, or sequential (wrapping at the file end)."""
    slots = (FILE_MIB << 20) // size
    if kind == "rand":
        return [rng.randrange(slots) * (size // 512) for _ in range(count)]
    return [(i % slots) * (size // 512) for i in range(count)]


# CPU time of this thread (user + system, so the kernel's copy counts) by default: on a
# shared host, wall time would also count the time other processes held the core.
CLOCK = time.thread_time


def run_device(b: Bench, sectors: list[int], seconds: float) -> float:
    """Requests per second through the device model."""
    d, n, done = b.depth, len(sectors), 0
    t0 = CLOCK()
    while True:
        for i in range(0, n, d):
            b.round(sectors[i:i + d])
        done += n
        el = CLOCK() - t0
        if el >= seconds:
            return done / el


def run_syscall(fd: int, b: Bench, sectors: list[int], seconds: float) -> float:
    """Requests per second of a bare os.preadv loop into the same guest buffers."""
    views = [[b.ram[a:a + b.size]] for a in b.bufs]
    d, n, done = b.depth, len(sectors), 0
    preadv = os.preadv
    t0 = CLOCK()
    while True:
        for i, s in enumerate(sectors):
            preadv(fd, views[i % d], s << 9)
        done += n
        el = CLOCK() - t0
        if el >= seconds:
            return done / el


def check(b: Bench, path: str) -> None:
    """The device really read the file: compare one round's buffers with the host file."""
    sectors = [i * 7 * (b.size // 512) for i in range(b.depth)]
    b.round(sectors)
    with open(path, "rb") as f:
        for s, a in zip(sectors, b.bufs):
            f.seek(s << 9)
            if f.read(b.size) != bytes(b.ram[a:a + b.size]):
                raise RuntimeError("device data differs from the host file")


def make_file(path: str) -> None:
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(FILE_MIB):
            f.write(chunk[1:] + chunk[:1])
            chunk = chunk[4096:] + chunk[:4096]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--depth", type=int, default=64)
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: current)")
    ap.add_argument("--dir", default="/dev/shm")
    ap.add_argument("--wall", action="store_true", help="wall-clock time instead of CPU time")
    args = ap.parse_args(argv)
    global CLOCK
    if args.wall:
        CLOCK = time.perf_counter
    cpu = args.cpu if args.cpu is not None else sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {cpu})
    path = os.path.join(args.dir, f"nodesvc-bench-blk-{os.getpid()}.img")
    make_file(path)
    fd = os.open(path, os.O_RDONLY)
    rng = random.Random(1)
    cases = [("4 KiB random read", "rand", 4096, 1, True, "kIOPS", 1e-3),
             ("4 KiB random read, direct chains", "rand", 4096, 1, False, "kIOPS", 1e-3),
             ("128 KiB sequential read", "seq", 128 << 10, 1, True, "MiB/s", 128 / 1024),
             ("128 KiB seq, 32 x 4 KiB segments", "seq", 128 << 10, 32, True, "MiB/s", 128 / 1024)]
    clock = "wall-clock" if args.wall else "CPU"
    print(f"virtio-blk device model, 1 core (cpu {cpu}), {FILE_MIB} MiB file on {args.dir}, "
          f"{args.depth} requests in flight, median of {args.runs} x {args.seconds:g}s "
          f"{clock} time; host load {os.getloadavg()[0]:.1f}")
    print(f"{'':36}{'device':>10}{'preadv':>10}{'ratio':>8}{'+us/req':>9}")
    try:
        for label, kind, size, segs, indirect, unit, scale in cases:
            b = Bench(path, size, args.depth, segs, indirect)
            check(b, path)
            sectors = offsets(kind, size, args.depth * 256, rng)
            dev, sysc = [], []
            for _ in range(args.runs):   # interleaved, so host noise hits both alike
                dev.append(run_device(b, sectors, args.seconds))
                sysc.append(run_syscall(fd, b, sectors, args.seconds))
            d, s = statistics.median(dev), statistics.median(sysc)
            extra = (1 / d - 1 / s) * 1e6
            print(f"{label:36}{d * scale:>10.1f}{s * scale:>10.1f}{d / s:>8.2f}{extra:>9.2f}  {unit}")
            b.close()
    finally:
        os.close(fd)
        os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
