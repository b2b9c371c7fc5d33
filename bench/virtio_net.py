"""virtio-net device-model benchmark: packets/s TX and RX through a TAP in a netns, one core.

    .venv/bin/python bench/virtio_net.py [--runs 5] [--packets 4096] [--sizes 60,1514]

Needs root and /dev/net/tun. The TAP lives in a namespace the benchmark creates
(and removes); no traffic leaves it. The in-process driver plays the guest
cheaply: descriptor i always points at buffer i, so a round is "put 256 heads
in the available ring, kick, read the used ring" and the device runs
synchronously, as on its event-loop thread.

TX: frames addressed to a MAC that is not the TAP's, so the host stack drops
them right after the TAP hands them over (the same for device and baseline).
Baseline: `os.write` of the same header+frame bytes on the same TAP fd.
RX: the TAP's queue is filled (untimed) with the same frames from an AF_PACKET
socket in the namespace, then drained into guest buffers through the device.
Baseline: the same fill, drained by `os.readv` into one guest buffer.
Medians of `--runs` interleaved runs.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import sys
import time

from nodesvc.net import frames
from nodesvc_virtio_net.testing import GUEST_MAC, TAP_NAME, NetRig, fixed_ring, used_heads

RING = 256
RX_BUF = 2048
OTHER_MAC = bytes.fromhex("020000000099")


def frame(size: int, dst: bytes, src: bytes) -> bytes:
    return frames.ethernet(dst, src, 0x88B5, bytes(size - 14))  # local experimental type


class Bench:
    def __init__(self, packets: int):
        self.rig = NetRig(mtu=1500, txqueuelen=packets + RING)
        rig, mem = self.rig, self.rig.mem
        self.tx_bufs = [rig.drv.alloc(12 + 1514) for _ in range(RING)]
        self.rx_bufs = [rig.drv.alloc(RX_BUF) for _ in range(RING)]
        fixed_ring(rig.rxq, mem, self.rx_bufs, RX_BUF, writable=True)
        self.heads = struct.Struct(f"<{RING}H").pack(*range(RING))
        self.pkt = rig.ns.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # proto 0: send only
        self.pkt.bind((TAP_NAME, 0))
        self._post(rig.rxq, self.heads)  # every RX buffer posted once; reposted as used
        rig.transport.process_notify(0)

    # -- guest driver, the cheap way ---------------------------------------------------------
    def _post(self, q, heads: bytes) -> None:
        ram, n = self.rig.mem, len(heads) // 2
        ram.view(q.avail + 4 + 2 * (q.avail_idx % RING), 2 * n)[:] = heads
        q.avail_idx = (q.avail_idx + n) & 0xFFFF
        ram.write_u16(q.avail + 2, q.avail_idx)

    def set_tx_frame(self, data: bytes) -> None:
        from nodesvc.vmm.virtio.queue import _DESC
        mem, q = self.rig.mem, self.rig.txq
        for i, addr in enumerate(self.tx_bufs):
            mem.write(addr, bytes(12) + data)
            _DESC.pack_into(mem.view(q.desc + 16 * i, 16), 0, addr, 12 + len(data), 0, 0)

    def tx_device(self, packets: int) -> float:
        rig = self.rig
        t0 = time.perf_counter()
        for _ in range(packets // RING):
            self._post(rig.txq, self.heads)
            rig.transport.process_notify(1)
            if len(used_heads(rig.txq, rig.mem)) != RING:
                raise RuntimeError("device did not complete a TX round")
        return packets / (time.perf_counter() - t0)

    def tx_syscall(self, data: bytes, packets: int) -> float:
        fd, buf, write = self.rig.tap.fd, bytes(12) + data, os.write
        t0 = time.perf_counter()
        for _ in range(packets):
            write(fd, buf)
        return packets / (time.perf_counter() - t0)

    def fill(self, data: bytes, packets: int) -> None:
        send = self.pkt.send
        for _ in range(packets):
            send(data)

    def rx_device(self, data: bytes, packets: int) -> float:
        rig, before = self.rig, self.rig.dev.stats.rx_packets
        self.fill(data, packets)
        t0 = time.perf_counter()
        rig.transport.process_notify(0)
        got = 0
        while got < packets:
            used = used_heads(rig.rxq, rig.mem)
            if not used:
                raise RuntimeError(f"RX stalled after {got} of {packets} frames")
            got += len(used)
            self._post(rig.rxq, struct.pack(f"<{len(used)}H", *(h for h, _ in used)))
            rig.transport.process_notify(0)
        el = time.perf_counter() - t0
        if used_heads(rig.rxq, rig.mem):  # the last kick found nothing more
            raise RuntimeError("more frames than sent arrived")
        if rig.dev.stats.rx_packets - before != packets:
            raise RuntimeError("device frame count differs from what was sent")
        return packets / el

    def rx_syscall(self, data: bytes, packets: int) -> float:
        self.fill(data, packets)
        fd, iov, readv = self.rig.tap.fd, [self.rig.mem.view(self.rx_bufs[0], RX_BUF)], os.readv
        t0 = time.perf_counter()
        for _ in range(packets):
            readv(fd, iov)
        return packets / (time.perf_counter() - t0)

    def check(self, tx: bytes, rx: bytes) -> None:
        """Frames really cross: TX ones reach the TAP link, RX ones arrive byte-identical."""
        before = self.rig.ns.link_info(TAP_NAME)["stats"]["rx_packets"]
        self.tx_device(RING)
        if self.rig.ns.link_info(TAP_NAME)["stats"]["rx_packets"] - before != RING:
            raise RuntimeError("TX frames did not all reach the TAP")
        self.rx_device(rx, RING)
        if any(self.rig.mem.read(a + 12, len(rx)) != rx for a in self.rx_bufs):
            raise RuntimeError("RX frame differs from the frame sent")

    def close(self) -> None:
        self.pkt.close()
        self.rig.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--packets", type=int, default=4096, help="per run (multiple of 256)")
    ap.add_argument("--sizes", default="60,1514", help="Ethernet frame sizes in bytes")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: current)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        print("virtio-net bench needs root and /dev/net/tun", file=sys.stderr)
        return 2
    packets = max(RING, args.packets // RING * RING)
    cpu = args.cpu if args.cpu is not None else sorted(os.sched_getaffinity(0))[0]
    os.sched_setaffinity(0, {cpu})
    sizes = [int(s) for s in args.sizes.split(",")]
    b = Bench(packets)
    print(f"virtio-net device model, 1 core (cpu {cpu}), TAP in a netns, "
          f"median of {args.runs} x {packets} packets")
    print(f"{'':24}{'device':>10}{'syscall':>10}{'ratio':>8}{'+us/pkt':>9}")
    try:
        for size in sizes:
            if not 60 <= size <= 1514:
                raise SystemExit(f"frame size {size} outside 60..1514")
            tx = frame(size, OTHER_MAC, GUEST_MAC)
            rx = frame(size, GUEST_MAC, b.rig.host_mac)
            b.set_tx_frame(tx)
            b.check(tx, rx)
            rows = {"TX": ([], []), "RX": ([], [])}
            for _ in range(args.runs):  # interleaved, so host noise hits both alike
                rows["TX"][0].append(b.tx_device(packets))
                rows["TX"][1].append(b.tx_syscall(tx, packets))
                rows["RX"][0].append(b.rx_device(rx, packets))
                rows["RX"][1].append(b.rx_syscall(rx, packets))
            for way, (dev, sysc) in rows.items():
                d, s = statistics.median(dev), statistics.median(sysc)
                extra = (1 / d - 1 / s) * 1e6
                label = f"{way} {size:>4} B frames"
                print(f"{label:24}{d / 1e3:>10.1f}{s / 1e3:>10.1f}{d / s:>8.2f}{extra:>9.2f}  kpps")
    finally:
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
