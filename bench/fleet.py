"""Fleet figures on one host: a real 3-member etcd cluster on loopback, three real node
services (jailed tiny `idle` guests) and one controller process (docs/fleet.md, "Figures").

    python bench/fleet.py [-n 100] [--failovers 3] [--ttl 5]

  - place and start N VMs across the 3 nodes: from the first create to every VM RUNNING in
    etcd's status (creates are written back to back, as a batch);
  - controller CPU per placed VM (user+system of the controller process over that phase);
  - etcd requests per placement, counted by etcd itself (grpc_server_handled_total summed
    over members, by method), minus the same methods' rate in an idle window before
    (lease keep-alive streams are not unary requests and are not counted);
  - failover: SIGKILL a node service with its VMMs and watchdog (a host dying), time until
    every VM it ran is RUNNING elsewhere; median over runs. It is bounded below by the node
    lease TTL, which is printed beside it.
Hosts are noisy (2 shared cores): read medians.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nodesvc.fleet.ops import Fleet  # noqa: E402
from tests.fleet.cluster import (Controller, EtcdCluster, FleetNode, tiny_spec,  # noqa: E402
                                 wait_for)
from tests.guests.build import build_guest  # noqa: E402

METHODS = ("Range", "Txn", "Put", "DeleteRange", "LeaseGrant", "LeaseRevoke")
HANDLED = re.compile(r'^grpc_server_handled_total\{[^}]*grpc_method="(\w+)"[^}]*\} (\S+)$')


def etcd_requests(etcd: EtcdCluster) -> dict[str, float]:
    """Unary requests etcd handled, by method, summed over the live members."""
    out: dict[str, float] = {}
    for i, port in enumerate(etcd.client_ports):
        if etcd.procs[i] is None or etcd.procs[i].poll() is not None:
            continue
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        for line in text.decode().splitlines():
            m = HANDLED.match(line)
            if m and m.group(1) in METHODS:
                out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(2))
    return out


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def call(etcd, fn):
    async def go():
        async with Fleet(etcd.endpoints) as f:
            return await fn(f)
    return asyncio.run(go())


def states(etcd) -> dict:
    return {v.id: v for v in call(etcd, lambda f: f.ls())}


def wait_running(etcd, ids, timeout, avoid=()) -> dict:
    ids = set(ids)

    def ok():
        vs = states(etcd)
        return vs if all(i in vs and vs[i].state == "RUNNING" and vs[i].node not in avoid
                         for i in ids) else None
    return wait_for(ok, timeout, f"{len(ids)} VMs RUNNING", interval=0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=100, help="VMs to place and start (default 100)")
    ap.add_argument("--failovers", type=int, default=3, help="failover runs (default 3)")
    ap.add_argument("--ttl", type=int, default=5, help="node lease TTL in seconds (default 5)")
    args = ap.parse_args()
    kernel = str(build_guest("idle"))
    per_node_mib = max(512, (args.n // 3 + 8) * 32 * 2)    # room for one node's VMs to move
    etcd = EtcdCluster().start()
    nodes = [FleetNode(f"n{i}", etcd, memory_mib=per_node_mib, labels={}, ttl=args.ttl).start()
             for i in range(3)]
    ctl = Controller("bench", etcd, ttl=3, log_dir=etcd.dir).start()
    try:
        wait_for(lambda: len([n for n in call(etcd, lambda f: f.nodes()) if n.record]) == 3,
                 30, "3 nodes registered")
        wait_for(lambda: call(etcd, lambda f: f.etcd.get(f.keys.leader)), 30, "a leader")
        idle0, t_idle = etcd_requests(etcd), time.monotonic()
        time.sleep(3)
        idle1, idle_s = etcd_requests(etcd), time.monotonic() - t_idle

        ids = [f"b-{i}" for i in range(args.n)]
        c0, r0, t0 = cpu_s(ctl.proc.pid), etcd_requests(etcd), time.monotonic()

        async def create_all(f):
            for i in ids:
                await f.create(i, tiny_spec(kernel), {"app": "bench"})
        call(etcd, create_all)
        t_created = time.monotonic() - t0
        vs = wait_running(etcd, ids, timeout=60 + args.n * 3)
        took = time.monotonic() - t0
        c1, r1 = cpu_s(ctl.proc.pid), etcd_requests(etcd)
        per_node = {n.name: sum(1 for v in vs.values() if v.node == n.name) for n in nodes}
        print(f"fleet: {args.n} tiny VMs placed and started on 3 nodes (jailed, 1 vCPU, "
              f"32 MiB each)")
        print(f"  first create -> all RUNNING     {took:.2f} s  ({args.n / took:.1f} VMs/s; "
              f"creates written in {t_created:.2f} s; per node {per_node})")
        print(f"  controller CPU per placed VM    {(c1 - c0) / args.n * 1e3:.1f} ms")
        net = {}
        for m in METHODS:
            base = (idle1.get(m, 0) - idle0.get(m, 0)) / idle_s * took
            net[m] = max(0.0, r1.get(m, 0) - r0.get(m, 0) - base) / args.n
        writes = sum(net[m] for m in ("Txn", "Put", "DeleteRange"))
        print(f"  etcd writes per placement       {writes:.2f}  (Txn {net['Txn']:.2f}, Put "
              f"{net['Put']:.2f}, DeleteRange {net['DeleteRange']:.2f}: the create, the "
              "placement, status updates; all clients, idle rate subtracted)")
        print(f"  etcd reads per placement        {net['Range']:.2f}  (mostly this benchmark "
              "polling status every 50 ms; the controller reads through its watch)")

        # Failover: keep ~10 VMs per node so each run moves a node's worth.
        keep = set(ids[:30])

        async def trim(f):
            for i in ids:
                if i not in keep:
                    await f.rm(i)
        call(etcd, trim)
        wait_for(lambda: set(states(etcd)) == keep, 120, "the fleet trimmed to 30 VMs")
        times = []
        for run in range(args.failovers):
            vs = wait_running(etcd, keep, timeout=120)
            victim = max(nodes, key=lambda n: sum(1 for v in vs.values() if v.node == n.name))
            moved = {i for i, v in vs.items() if v.node == victim.name}
            t0 = time.monotonic()
            victim.kill_all()
            wait_running(etcd, moved, timeout=args.ttl + 120, avoid={victim.name})
            times.append(time.monotonic() - t0)
            victim.start()
            wait_for(lambda: victim.name in {n.name for n in call(etcd, lambda f: f.nodes())
                                             if n.record}, 30, f"{victim.name} back")
            print(f"  failover run {run + 1}: {len(moved)} VMs of {victim.name} RUNNING "
                  f"elsewhere after {times[-1]:.2f} s")
        if times:
            med = statistics.median(times)
            print(f"  failover (median of {len(times)})    {med:.2f} s  (node lease TTL {args.ttl} s, "
                  f"last renewed up to {args.ttl / 4:g} s before the kill, then placed and "
                  "booted)")
    finally:
        ctl.kill()
        for n in nodes:
            n.stop()
        etcd.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
