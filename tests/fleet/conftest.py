"""One fleet per test module: a real 3-member etcd cluster on loopback, three real node
services (tiny `idle` guests on KVM) and two controllers; a checker that watches, all test
long, that no fleet VM id ever has a live VMM on two nodes at once."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import time

import grpc
import pytest

from nodesvc.api.v1 import nodesvc_pb2 as pb
from nodesvc.api.v1 import nodesvc_pb2_grpc as pb_grpc
from nodesvc.fleet.ops import Fleet

from .cluster import (ETCD_MISSING, Controller, EtcdCluster, FleetNode, tiny_spec, wait_for)

#: Lease TTLs in tests. A node's must outlast an etcd leader election on a loaded 2-core
#: host (measured: up to ~1.3 s without a keep-alive acknowledgement when idle) plus its
#: fencing margin (TTL/4), or killing the etcd leader would fence healthy nodes.
TTL = 5
CONTROLLER_TTL = 3


class DoubleRunChecker(threading.Thread):
    """Every 20 ms, from the process table (so frozen or dead node services don't hide
    anything): which node has a live VMM for which fleet VM id. Any id on two nodes at
    once is recorded as a violation."""

    def __init__(self, nodes):
        super().__init__(daemon=True)
        self.nodes, self.violations, self.samples = nodes, [], 0
        self.halt = threading.Event()

    def run(self):
        while not self.halt.wait(0.02):
            where: dict[str, list[str]] = {}
            for n in list(self.nodes.values()):
                for vm_id in set(n.vmm_pids().values()):
                    where.setdefault(vm_id, []).append(n.name)
            self.samples += 1
            for vm_id, names in where.items():
                if len(names) > 1:
                    self.violations.append((time.time(), vm_id, names))


class Fleetbed:
    def __init__(self, kernel: str):
        self.kernel = kernel
        self.logs = tempfile.mkdtemp(prefix="fleet-logs-")
        self.etcd = EtcdCluster().start()
        self.nodes = {}
        for name, mem, zone in (("n1", 512, "a"), ("n2", 384, "a"), ("n3", 256, "b")):
            self.nodes[name] = FleetNode(name, self.etcd, memory_mib=mem,
                                         labels={"zone": zone}, ttl=TTL,
                                         ).start()
        self.controllers = {c: Controller(c, self.etcd, ttl=CONTROLLER_TTL, log_dir=self.logs).start()
                            for c in ("ctl-a", "ctl-b")}
        self.checker = DoubleRunChecker(self.nodes)
        self.checker.start()
        self.wait_nodes(set(self.nodes))

    # -- etcd side ----------------------------------------------------------------------
    def call(self, fn):
        async def go():
            async with Fleet(self.etcd.endpoints) as f:
                return await fn(f)
        return asyncio.run(go())

    def create(self, vm_id, labels=None, placement=None, memory_mib=32):
        return self.call(lambda f: f.create(vm_id, tiny_spec(self.kernel, memory_mib),
                                            labels, placement))

    def ls(self) -> dict:
        return {v.id: v for v in self.call(lambda f: f.ls())}

    def registered(self) -> set[str]:
        return {n.name for n in self.call(lambda f: f.nodes()) if n.record}

    def wait_nodes(self, names: set[str], timeout: float = 30):
        wait_for(lambda: names <= self.registered(), timeout, f"nodes {names} registered")

    def wait_running(self, ids, timeout: float = 120, avoid: set[str] = frozenset()):
        """Every id RUNNING (per etcd status), on a node not in `avoid`."""
        ids = set(ids)

        def ok():
            vs = self.ls()
            bad = {i: (vs[i].node, vs[i].state) if i in vs else "absent" for i in ids
                   if i not in vs or vs[i].state != "RUNNING" or vs[i].node in avoid}
            return vs if not bad else None
        try:
            return wait_for(ok, timeout, f"{len(ids)} VMs RUNNING", interval=0.2)
        except AssertionError:
            vs = self.ls()
            raise AssertionError({i: (vs[i].node, vs[i].state, vs[i].status and
                                      vs[i].status.reason) if i in vs else "absent"
                                  for i in ids if i not in vs or vs[i].state != "RUNNING"
                                  or vs[i].node in avoid}) from None

    def leader(self) -> str | None:
        async def get(f):
            kv = await f.etcd.get(f.keys.leader)
            return kv.value.decode() if kv else None
        return self.call(get)

    # -- node side ----------------------------------------------------------------------
    def node_vms(self, name: str) -> dict[str, pb.Vm]:
        """The fleet VMs a node's own API reports."""
        with grpc.insecure_channel(f"unix:{self.nodes[name].socket}") as ch:
            vms = pb_grpc.NodeServiceStub(ch).ListVms(pb.ListVmsRequest(), timeout=5).vms
        return {v.id: v for v in vms if "fleet.nodesvc/id" in v.labels}

    def close(self):
        self.checker.halt.set()
        self.checker.join(5)
        for c in self.controllers.values():
            c.kill()
        for n in self.nodes.values():
            n.stop()
        self.etcd.stop()
        shutil.rmtree(self.logs, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet():
    if not shutil.which("etcd") or not shutil.which("etcdctl"):
        pytest.skip(ETCD_MISSING)
    if os.geteuid() != 0 or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("needs root and /dev/kvm (real node services run tiny guests)")
    if not shutil.which(os.environ.get("GUEST_CC") or "gcc"):
        pytest.skip("gcc is not installed: cannot build the tiny guests")
    from tests.guests.build import build_guest
    bed = Fleetbed(str(build_guest("idle")))
    try:
        yield bed
    finally:
        bed.close()
    assert not bed.checker.violations, bed.checker.violations[:5]
