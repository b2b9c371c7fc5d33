"""MMDS benchmark: GET requests/s and p50/p99 latency through the real net device, beside
the same document served by Python's http.server on loopback, in the same run.

    .venv/bin/python bench/mmds.py [--runs 3] [--seconds 3] [--clients 1,4]

Needs root and /dev/net/tun. The device runs as in tests/net/test_mmds_device.py: a
NetRig (virtio-net on a TAP in a throw-away netns) whose MMDS stack serves the document,
and a GuestBridge namespace whose kernel is the guest (its eth0 frames become the
device's TX chains through the in-process driver; what the device completes on RX goes
back into it). The device, its loop and the bridge share one thread of this process, as
a VMM's event loop would.

Clients are separate processes in the guest namespace (so they keep off this process's
GIL), each one keep-alive `http.client.HTTPConnection` doing GETs back to back and
checking every answer. Baseline: `http.server.ThreadingHTTPServer` (HTTP/1.1, so
keep-alive; Nagle off) in this process, bound to 127.0.0.1 inside the same guest
namespace, answering the same paths from the same `MmdsStore` lookup; the same client
processes. MMDS and baseline runs alternate, so host noise hits both alike. Figures are
medians over `--runs` of each run's requests/s and its p50/p99 over all its requests.
Nothing is pinned: the host has 2 shared cores.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import statistics
import subprocess
import sys
import threading
import time

MMDS_IP = "169.254.169.254"
DOC = {"latest": {"meta-data": {"ami-id": "ami-0abc1234", "instance-id": "i-0bench",
                                "placement": {"availability-zone": "eu-west-1a"}},
                  "user-data": "u" * 4096}}
PATHS = ("/latest/meta-data/ami-id", "/latest/user-data")
WARMUP = 20


# -- a client: one process, one keep-alive connection -------------------------------------

def worker(host: str, port: int, path: str, expect: int, seconds: float) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.connect()

    def get() -> None:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200 or len(body) != expect or r.will_close:
            raise SystemExit(f"bad answer from {host}:{port}{path}: {r.status} "
                             f"{len(body)} bytes, close={r.will_close}")
    for _ in range(WARMUP):
        get()
    print("ready", flush=True)
    sys.stdin.readline()                       # "go": every client starts together
    lat, clock = [], time.perf_counter
    t0 = clock()
    end = t0 + seconds
    while True:
        a = clock()
        get()
        b = clock()
        lat.append(b - a)
        if b >= end:
            break
    conn.close()
    print(json.dumps({"elapsed": b - t0, "lat": lat}), flush=True)


def run_clients(ns: str, host: str, port: int, path: str, expect: int, clients: int,
                seconds: float) -> tuple[float, float, float]:
    """(requests/s, p50 s, p99 s) of `clients` concurrent worker processes."""
    cmd = ["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), "--worker",
           host, str(port), path, str(expect), str(seconds)]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(clients)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a client failed to start against {host}:{port}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.stdout.readline()) for p in procs]
        for p in procs:
            if p.wait(30) != 0:
                raise RuntimeError(f"a client against {host}:{port} failed")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    lat = sorted(x for r in results for x in r["lat"])
    rate = sum(len(r["lat"]) / r["elapsed"] for r in results)
    return rate, lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


# -- the two servers ----------------------------------------------------------------------

class Mmds:
    """The net device serving MMDS to a guest namespace (the test suite's rig)."""

    def __init__(self):
        from nodesvc.mmds.config import MmdsConfig
        from nodesvc.mmds.vm import VmMmds
        from nodesvc.vmm.virtio import constants as V
        from nodesvc_virtio_net import constants as C
        from nodesvc_virtio_net.testing import GuestBridge, NetRig
        self.vm_mmds = VmMmds(MmdsConfig(("eth0",)), "bench-vm")
        self.vm_mmds.mmds.put(DOC)
        features = (1 << C.F_MAC) | (1 << C.F_STATUS) | (1 << V.F_VERSION_1)  # no offloads
        self.rig = NetRig(features=features, mmds_stack=self.vm_mmds.stack_factory("eth0"))
        try:
            self.bridge = GuestBridge(self.rig)
            self.rig.closers.append(self.bridge.close)
            self.bridge.route(f"{MMDS_IP}/32")
            self.bridge.start()
        except BaseException:
            self.rig.close()
            raise
        self.ns = self.bridge.ns.name

    def body(self, path: str) -> bytes:
        return self.vm_mmds.mmds.store.get(path, False, False).encode()

    def check(self) -> None:
        dev, st = self.rig.dev, self.rig.dev.mmds.stack
        if dev.failed or dev.stats.tx_packets or st.stats["rx_dropped"]:
            raise RuntimeError(f"device: failed={dev.failed} tx_packets={dev.stats.tx_packets} "
                               f"stack={dict(st.stats)}")

    def close(self) -> None:
        self.rig.close()


class Loopback:
    """http.server on 127.0.0.1 inside the guest namespace, same lookups as MMDS."""

    def __init__(self, ns, store):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"       # keep-alive, like MMDS
            disable_nagle_algorithm = True      # headers and body are two writes

            def do_GET(self):
                body = store.get(self.path, False, False).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ns.run(http.server.ThreadingHTTPServer, ("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="per run")
    ap.add_argument("--clients", default="1,4", help="concurrent keep-alive clients")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        host, port, path, expect, seconds = args.worker
        worker(host, int(port), path, int(expect), float(seconds))
        return 0
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        print("MMDS bench needs root and /dev/net/tun", file=sys.stderr)
        return 2
    mmds = Mmds()
    loop = None
    try:
        loop = Loopback(mmds.bridge.ns, mmds.vm_mmds.mmds.store)
        servers = {"mmds": (MMDS_IP, 80), "http.server": ("127.0.0.1", loop.port)}
        print(f"MMDS GETs through the virtio-net device (GuestBridge netns) vs http.server on "
              f"loopback; keep-alive http.client processes; median of {args.runs} x "
              f"{args.seconds:g} s")
        print(f"{'':34}{'MMDS':>24}{'http.server':>27}")
        print(f"{'path (body), clients':34}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
              f"{'req/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'req/s ratio':>13}")
        for path in PATHS:
            expect = len(mmds.body(path))
            for clients in (int(c) for c in args.clients.split(",")):
                runs: dict[str, list] = {k: [] for k in servers}
                for _ in range(args.runs):          # interleaved
                    for name, (host, port) in servers.items():
                        runs[name].append(run_clients(mmds.ns, host, port, path, expect,
                                                      clients, args.seconds))
                mmds.check()
                med = {k: [statistics.median(r[i] for r in v) for i in range(3)]
                       for k, v in runs.items()}
                (mr, m50, m99), (br, b50, b99) = med["mmds"], med["http.server"]
                label = f"{path} ({expect} B), {clients}"
                print(f"{label:34}{mr:>8.0f}{m50 * 1e3:>8.2f}{m99 * 1e3:>8.2f}"
                      f"{br:>11.0f}{b50 * 1e3:>8.2f}{b99 * 1e3:>8.2f}{mr / br:>13.2f}")
        st = mmds.rig.dev.mmds.stack
        print(f"device: {mmds.rig.dev.stats.tx_mmds} MMDS frames in, "
              f"{mmds.rig.dev.stats.rx_mmds} out, none to the TAP; "
              f"{st.mmds.stats['rx_get_ok']} GETs answered")
    finally:
        if loop is not None:
            loop.close()
        mmds.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
