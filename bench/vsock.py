"""virtio-vsock device-model benchmark: stream MiB/s through the device, beside a plain socket copy.

    .venv/bin/python bench/vsock.py [--runs 5] [--mib 32] [--cpu N] [--peer-cpu M]

The VMM side runs on one core: the device and the in-process guest
(nodesvc_vsock.guest: real rings in real guest memory, serviced on the device's
event-loop thread the way interrupts would be, consuming data at once and
returning credit like Linux). The host application is a separate process (as it
is in life; it also keeps its work off our GIL) on another core when there is
one: it `CONNECT`s to the VM's socket for host→guest, and is the listener at
`<uds>_<port>` for guest→host. Baseline, measured in the same run and
interleaved with the device runs: the same peer process and this process
copying through a plain `socketpair()`, 64 KiB per write/read. The guest's own
Python work is included in the device figures (about as costly as the device's),
so the ratios understate the device model. Medians of `--runs` runs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time

CHUNK = 64 * 1024     # host write/read size, and Linux's largest vsock packet


# -- the host application: a forked process driven over a control socket ------------------

def _peer(ctrl: socket.socket) -> None:
    pattern = memoryview(os.urandom(CHUNK))
    while True:
        msg, fds, _, _ = socket.recv_fds(ctrl, 256, 1)
        if not msg:
            return
        cmd, n, seed = msg.split()
        n, seed = int(n), int(seed)
        with socket.socket(fileno=fds[0]) as s:
            s.setblocking(True)  # the sender may have left the shared file non-blocking
            if cmd == b"send":
                data = memoryview(random.Random(seed).randbytes(n)) if seed else None
                for off in range(0, n, CHUNK):
                    s.sendall(data[off:off + CHUNK] if data is not None else pattern)
                reply = b"done -"
            else:
                h, buf, got = hashlib.sha256(), bytearray(CHUNK), 0
                view = memoryview(buf)
                while got < n:
                    k = s.recv_into(view, min(CHUNK, n - got))
                    if not k:
                        break
                    h.update(view[:k])
                    got += k
                reply = b"done " + h.hexdigest().encode()
        ctrl.sendall(reply.ljust(80))


class Peer:
    def __init__(self, cpu: int | None):
        self.ctrl, child = socket.socketpair()
        self.pid = os.fork()   # before any thread exists in this process
        if self.pid == 0:
            self.ctrl.close()
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            try:
                _peer(child)
            finally:
                os._exit(0)
        child.close()

    def start(self, cmd: str, sock: socket.socket, n: int, seed: int = 0) -> None:
        socket.send_fds(self.ctrl, [f"{cmd} {n} {seed}".encode()], [sock.fileno()])

    def result(self) -> str:
        reply = b""
        while len(reply) < 80:
            more = self.ctrl.recv(80 - len(reply))
            if not more:
                raise RuntimeError("the peer process died")
            reply += more
        return reply.split()[1].decode()

    def close(self) -> None:
        self.ctrl.close()
        os.waitpid(self.pid, 0)


# -- the VMM side ---------------------------------------------------------------------------

def _read_into(sock: socket.socket, n: int) -> None:
    view, got = memoryview(bytearray(CHUNK)), 0
    while got < n:
        k = sock.recv_into(view, min(CHUNK, n - got))
        if not k:
            raise RuntimeError(f"EOF after {got} of {n} bytes")
        got += k


def baseline(peer: Peer, total: int, direction: str) -> tuple[float, float]:
    """(wall, CPU-bound) MiB/s through a plain socketpair between the peer process and us."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        t0, c0 = time.perf_counter(), time.thread_time()
        if direction == "in":
            peer.start("send", a, total)
            _read_into(b, total)
        else:
            peer.start("recv", a, total)
            chunk = memoryview(os.urandom(CHUNK))
            for _ in range(total // CHUNK):
                b.sendall(chunk)
        cpu = time.thread_time() - c0
        peer.result()
        return mib(total, time.perf_counter() - t0), mib(total, cpu)
    finally:
        a.close()
        b.close()


def mib(total: int, seconds: float) -> float:
    return total / seconds / (1 << 20)


class VsockBench:
    def __init__(self, sockdir: str, rx_buf_size: int, peer: Peer):
        from nodesvc_vsock.guest import Rig
        self.peer = peer
        self.rig = Rig(os.path.join(sockdir, f"v{rx_buf_size}.sock"), mem_mib=64,
                       rx_buffers=128, rx_buf_size=rx_buf_size, record=False)
        g = self.rig.guest
        g.listen(52, sink=True)
        g.listen(53)
        self.h = self._host_connect(52)
        self.sink = g.accept(52)
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(self.rig.uds_path + "_1234")
        lst.listen(1)
        self.src = g.connect(1234)
        self.peer_sock, _ = lst.accept()
        lst.close()
        self._clock = time.pthread_getcpuclockid(self.rig.loop._thread.ident)

    def _cpu(self) -> float:
        """CPU seconds of the event-loop thread: the device and the guest, nothing else."""
        return time.clock_gettime(self._clock)

    def _host_connect(self, port: int) -> socket.socket:
        h = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        h.settimeout(30)
        h.connect(self.rig.uds_path)
        h.sendall(b"CONNECT %d\n" % port)
        line = b""
        while not line.endswith(b"\n"):
            line += h.recv(1)
        return h

    def host_to_guest(self, total: int) -> tuple[float, float]:
        done, target = threading.Event(), self.sink.rx_total + total
        self.sink.on_data = lambda s: s.rx_total >= target and done.set()
        t0, c0 = time.perf_counter(), self._cpu()
        self.peer.start("send", self.h, total)
        if not done.wait(60):
            raise TimeoutError("host→guest stalled")
        el, cpu = time.perf_counter() - t0, self._cpu() - c0
        self.peer.result()
        return mib(total, el), mib(total, cpu)

    def guest_to_host(self, total: int, data: bytes | None = None) -> tuple[float, float]:
        data = data if data is not None else bytes(total)
        t0, c0 = time.perf_counter(), self._cpu()
        self.peer.start("recv", self.peer_sock, total)
        self.src.send(data)
        digest = self.peer.result()
        el, cpu = time.perf_counter() - t0, self._cpu() - c0
        if digest != hashlib.sha256(data).hexdigest():
            raise RuntimeError("guest→host bytes differ")
        return mib(total, el), mib(total, cpu)

    def check(self) -> None:
        """Both directions deliver exactly the bytes sent (random data, 1 MiB each)."""
        h, n = self._host_connect(53), 1 << 20
        s = self.rig.guest.accept(53)
        self.peer.start("send", h, n, seed=7)
        got = b"".join(s.read(128 * 1024) for _ in range(n // (128 * 1024)))
        self.peer.result()
        if got != random.Random(7).randbytes(n):
            raise RuntimeError("host→guest bytes differ")
        h.close()
        self.guest_to_host(n, os.urandom(n))

    def close(self) -> None:
        for s in (self.h, self.peer_sock):
            s.close()
        self.rig.close()


def connect_timeout(sockdir: str, runs: int = 3) -> tuple[float, float]:
    """Seconds from a host's half `CONNECT` line to the muxer closing it; and the nominal
    figure (connect timeout + one housekeeping tick) it should be near."""
    from nodesvc_vsock.guest import Rig
    rig = Rig(os.path.join(sockdir, "timeout.sock"), mem_mib=16, record=False)
    took = []
    try:
        for _ in range(runs):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as h:
                h.settimeout(30)
                h.connect(rig.uds_path)
                h.sendall(b"CONNE")
                t0 = time.perf_counter()
                try:
                    h.recv(1)
                except ConnectionResetError:
                    pass
                took.append(time.perf_counter() - t0)
        mux = rig.device.muxer
        return statistics.median(took), mux.connect_timeout + mux._tick_ns / 1e9
    finally:
        rig.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mib", type=int, default=32, help="MiB per direction per run")
    ap.add_argument("--cpu", type=int, default=None, help="VMM side CPU (default: first allowed)")
    ap.add_argument("--peer-cpu", type=int, default=None, help="host application CPU")
    args = ap.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    cpu = args.cpu if args.cpu is not None else cpus[0]
    peer_cpu = args.peer_cpu if args.peer_cpu is not None else next(
        (c for c in cpus if c != cpu), cpu)
    peer = Peer(peer_cpu)
    os.sched_setaffinity(0, {cpu})
    total = args.mib << 20
    sockdir = tempfile.mkdtemp(prefix="vsb", dir="/tmp")
    print(f"virtio-vsock device model on cpu {cpu} (host peer process on cpu {peer_cpu}), "
          f"{args.mib} MiB per run, median of {args.runs}")
    print("wall = elapsed time; cpu = bytes / CPU time of the VMM side (device + guest on the\n"
          "event-loop thread; for the socket baseline, the thread doing our reads/writes)")
    print(f"{'MiB/s':42}{'device':>8}{'socket':>8}{'ratio':>7}  |{'device':>8}{'socket':>8}"
          f"{'ratio':>7}")
    print(f"{'':42}{'wall':>8}{'wall':>8}{'':>7}  |{'cpu':>8}{'cpu':>8}")
    benches = {}
    try:
        for rx in (4096, 65536):
            benches[rx] = b = VsockBench(sockdir, rx, peer)
            b.check()
        cases = [("host→guest, 4 KiB RX buffers (Linux)", "in",
                  lambda: benches[4096].host_to_guest(total)),
                 ("host→guest, 64 KiB RX buffers", "in",
                  lambda: benches[65536].host_to_guest(total)),
                 ("guest→host, 64 KiB packets (Linux max)", "out",
                  lambda: benches[4096].guest_to_host(total))]
        for label, direction, fn in cases:
            dev, base = [], []
            for _ in range(args.runs):   # interleaved, so host noise hits both alike
                dev.append(fn())
                base.append(baseline(peer, total, direction))
            dw, sw = (statistics.median(r[0] for r in runs) for runs in (dev, base))
            dc, sc = (statistics.median(r[1] for r in runs) for runs in (dev, base))
            print(f"{label:42}{dw:>8.0f}{sw:>8.0f}{dw / sw:>7.2f}  |{dc:>8.0f}{sc:>8.0f}"
                  f"{dc / sc:>7.2f}")
        took, nominal = connect_timeout(sockdir)
        print(f"silent host (half a CONNECT line) closed after {took:.2f} s, median of 3 "
              f"(nominal: timeout + one tick = {nominal:.2f} s)")
    finally:
        for b in benches.values():
            b.close()
        peer.close()
        shutil.rmtree(sockdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
