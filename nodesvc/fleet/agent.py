"""The node side of the fleet, run inside `nodesvc serve --fleet-etcd ...`.

It registers the node under a lease and keeps the lease alive, and it is the node's half of
fencing (docs/fleet.md, "No VM on two nodes"):
  - the gate: a fleet VM's VMM is launched only while this node holds a live lease *and* the
    VM's assignment in etcd names this node, this lease and this assignment revision, in
    phase RUN (checked synchronously in the spawn path, so no start slips past a fence);
  - the local deadline: each acknowledged keep-alive proves the lease lives until at least
    send time + TTL; `margin` before that, with no newer proof, the agent fences: closes the
    gate, stops every fleet VM, deletes them, revokes the old lease, and only then registers
    again. The fence watchdog process (fence.py) does the killing when this process is hung;
  - enforcement: a fleet VM here without a matching RUN assignment is stopped and deleted; an
    assignment in RELEASE is acknowledged (key deleted) only after its VM is gone here.
Nothing here can stop the node's own API: every etcd failure is logged and retried.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time

import grpc

from ..api.v1 import nodesvc_pb2 as pb
from ..api.v1 import nodesvc_pb2_grpc as pb_grpc
from . import fence
from .etcd import Etcd, EtcdError, cmp_create, cmp_mod, op_delete, op_put
from .mirror import Mirror
from .model import (DEFAULT_PREFIX, LABEL_ASSIGNMENT, LABEL_FLEET, RELEASE, RUN, Assignment,
                    Keys, NodeRecord)

log = logging.getLogger("nodesvc.fleet.agent")
ACTIVE = (pb.VM_STATE_STARTING, pb.VM_STATE_RUNNING, pb.VM_STATE_PAUSED, pb.VM_STATE_STOPPING)


class NodeAgent:
    def __init__(self, *, endpoints: list[str], name: str, advertise: str, state_dir: str,
                 socket_path: str, labels: dict | None = None, ttl: int = 10,
                 prefix: str = DEFAULT_PREFIX, margin: float | None = None,
                 cgroup_parent: str | None = None):
        self.endpoints, self.name, self.advertise = endpoints, name, advertise
        self.state_dir = os.path.abspath(state_dir)
        self.socket_path, self.labels, self.ttl = socket_path, labels or {}, ttl
        self.keys = Keys(prefix)
        # Fence this long before the earliest moment etcd could expire the lease.
        self.margin = margin if margin is not None else max(0.5, ttl / 4)
        self.lease = 0
        self.node_rev = 0           # create_revision of our node key (this registration)
        self.deadline = 0.0         # monotonic: the lease lives at least until here
        self.fenced = True          # gate closed until registered
        self.cgroup_parent = cgroup_parent      # jailed VMMs' cgroups, for the watchdog
        self.kick = asyncio.Event()
        # Until the first registration attempt ends, leave fleet VMs alone: a restart within
        # the TTL resumes the lease and keeps them (the watchdog still kills at the deadline).
        self.tried = asyncio.Event()
        self.watchdog: subprocess.Popen | None = None
        self._enforce_lock = asyncio.Lock()
        self._last_record = b""

    # ------------------------------------------------------------------ the gate
    def live(self) -> bool:
        return (not self.fenced and self.lease != 0
                and time.monotonic() < self.deadline - self.margin)

    def may_run(self, vm_id: str, labels: dict) -> str | None:
        """None if this fleet VM may run here now, else why not."""
        if not self.live():
            return "this node holds no live fleet lease"
        kv = self.mirror.get(self.keys.assignment(vm_id)) if self.mirror else None
        if kv is None:
            return "no assignment in etcd"
        a = Assignment.load(kv.value)
        if a.node != self.name or kv.lease != self.lease:
            return f"assigned to {a.node}"
        if a.phase != RUN:
            return "its assignment is being released"
        if labels.get(LABEL_ASSIGNMENT) != str(kv.create_revision):
            return "the VM is from an older assignment"
        return None

    def start_gate(self, rec) -> str | None:
        """NodeConfig.start_gate: checked under the VM's lock right before its VMM is
        launched (any launcher), so no start slips past a fence."""
        if LABEL_FLEET not in rec.labels:
            return None
        why = self.may_run(rec.id, rec.labels)
        return f"fleet fence: {why}" if why else None

    # ------------------------------------------------------------------ lifecycle
    mirror: Mirror | None = None

    async def run(self) -> None:
        self.etcd = Etcd(self.endpoints)
        ch = grpc.aio.insecure_channel(f"unix:{self.socket_path}")
        self.node = pb_grpc.NodeServiceStub(ch)
        self.mirror = Mirror(self.etcd, self.keys.assign,
                             on_events=lambda evs: self.kick.set())
        tasks = [asyncio.create_task(self.mirror.run(), name="fleet-mirror"),
                 asyncio.create_task(self._enforcer(), name="fleet-enforce"),
                 asyncio.create_task(self._follow_node(), name="fleet-node-watch")]
        try:
            await self._wait_node()
            while True:
                try:
                    await self.register()
                except EtcdError as e:
                    log.warning("fleet: cannot register %s: %s; retrying", self.name, e)
                    if self._persisted_lease() == 0 or time.monotonic() > self._old_kill_at():
                        self.tried.set()    # nothing of ours can still be valid
                    await asyncio.sleep(min(2.0, self.ttl / 3))
                    continue
                self.tried.set()
                await self.hold()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ch.close()
            await self.etcd.close()

    async def _wait_node(self) -> None:
        while True:
            try:
                await self.node.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=2)
                return
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)

    def _lease_file(self) -> str:
        return os.path.join(fence.fence_dir(self.state_dir), "lease.json")

    async def _record(self) -> NodeRecord:
        info = await self.node.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=5)
        vms = (await self.node.ListVms(pb.ListVmsRequest(), timeout=5)).vms
        other = [v for v in vms if v.state in ACTIVE and LABEL_FLEET not in v.labels]
        return NodeRecord(
            name=self.name, endpoint=self.advertise, lease=self.lease, labels=self.labels,
            cpus=info.cpus, memory_mib=info.memory_mib, cpu_overcommit=info.cpu_overcommit,
            other_memory_mib=sum(v.spec.machine.memory_mib for v in other),
            other_vcpus=sum(v.spec.machine.vcpus for v in other),
            versions=dict(info.versions), registered_at=time.time())

    def _arm(self, sent: float, ttl: int) -> None:
        self.deadline = sent + ttl
        # The watchdog kills halfway through the margin: after our own orderly fence, before
        # the lease can be gone in etcd.
        fence.write_deadline(self.state_dir, self.lease, self.deadline - self.margin / 2,
                             self.cgroup_parent)
        self._ensure_watchdog()

    def _ensure_watchdog(self) -> None:
        if self.watchdog is not None and self.watchdog.poll() is None:
            return
        if fence.watchdog_running(self.state_dir):
            return
        logf = open(os.path.join(fence.fence_dir(self.state_dir), "fence.log"), "ab")
        self.watchdog = subprocess.Popen(
            [sys.executable, "-m", "nodesvc.fleet.fence", "--state-dir", self.state_dir],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
        logf.close()

    async def register(self) -> None:
        os.makedirs(fence.fence_dir(self.state_dir), mode=0o700, exist_ok=True)
        key = self.keys.node(self.name)
        old = self._persisted_lease()
        if old:     # a restart within the TTL keeps the lease, so its VMs keep running
            sent, ttl = await self.etcd.keepalive(old)
            kv = await self.etcd.get(key) if ttl > 0 else None
            if kv is not None and kv.lease == old:
                self.lease, self.node_rev = old, kv.create_revision
                self._arm(sent, ttl)
                self.fenced = False
                log.info("fleet: %s resumed lease %x", self.name, old)
                self.kick.set()
                return
        sent = time.monotonic()
        lease, ttl = await self.etcd.grant(self.ttl)
        self.lease = lease
        self._arm(sent, ttl)
        rec = await self._record()
        r = await self.etcd.txn([cmp_create(key, 0)], [op_put(key, rec.dump(), lease)],
                                retries=2)
        self.node_rev = r.header.revision
        if not r.succeeded:     # ours, if a timed-out first attempt did commit
            kv = await self.etcd.get(key)
            if kv is None or kv.lease != lease:
                await self.etcd.revoke(lease)
                self.lease = 0
                raise EtcdError(f"node name {self.name!r} is registered by another live node")
            self.node_rev = kv.create_revision
        with open(self._lease_file(), "w") as f:
            json.dump({"lease": lease, "name": self.name}, f)
        self._last_record = rec.dump()
        self.fenced = False
        log.info("fleet: registered %s (lease %x, ttl %ds)", self.name, lease, ttl)
        self.kick.set()

    def _old_kill_at(self) -> float:
        d = fence.read_deadline(self.state_dir)
        return d[1] if d else 0.0

    def _persisted_lease(self) -> int:
        try:
            with open(self._lease_file()) as f:
                d = json.load(f)
            return int(d["lease"]) if d.get("name") == self.name else 0
        except (OSError, ValueError, KeyError):
            return 0

    async def hold(self) -> None:
        """Keep the lease alive until it is lost; then fence. Returns after fencing."""
        interval = max(0.2, self.ttl / 4)
        next_refresh = time.monotonic() + 5
        while True:
            now = time.monotonic()
            fence_at = self.deadline - self.margin
            if now >= fence_at:
                return await self.fence_now("no keep-alive acknowledged in time")
            # Short attempts, retried at once: while etcd elects a new leader, a renewal
            # forwarded to the dead one is simply dropped.
            wait = interval
            try:
                sent, ttl = await self.etcd.keepalive(
                    self.lease, timeout=max(0.05, min(interval, 1.0, fence_at - now)))
                if ttl <= 0:
                    return await self.fence_now("etcd says the lease is gone")
                self._arm(sent, ttl)
            except EtcdError as e:
                log.warning("fleet: keep-alive failed: %s", e)
                wait = 0.05
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + 5
                await self._refresh_record()
            wait = min(wait, self.deadline - self.margin - time.monotonic())
            await asyncio.sleep(max(0.0, wait))

    async def _refresh_record(self) -> None:
        """Re-publish capacity when what the node holds outside the fleet changed."""
        try:
            rec = await self._record()
            rec.registered_at = 0
            data = rec.dump()
            if data != self._last_record:
                key = self.keys.node(self.name)
                await self.etcd.txn([cmp_create(key, self.node_rev)],
                                    [op_put(key, data, self.lease)], retries=2)
                self._last_record = data
        except (EtcdError, grpc.aio.AioRpcError) as e:
            log.warning("fleet: cannot refresh the node record: %s", e)

    async def fence_now(self, why: str) -> None:
        """Lease lost (or may be): stop every fleet VM before doing anything else."""
        self.fenced = True
        old, self.lease = self.lease, 0
        log.warning("fleet: fencing %s: %s (lease %x)", self.name, why, old)
        while True:
            try:
                await self._stop_fleet_vms(lambda vm: True)
                break
            except grpc.aio.AioRpcError as e:
                log.error("fleet: fencing: %s; retrying", e.details())
                await asyncio.sleep(0.1)
        try:        # frees this node's assignments now rather than at expiry
            await self.etcd.revoke(old)
        except EtcdError:
            pass

    # ------------------------------------------------------------------ enforcement
    async def _stop_fleet_vms(self, doomed) -> list[str]:
        vms = (await self.node.ListVms(pb.ListVmsRequest(), timeout=10)).vms
        gone = []

        async def one(vm):
            if vm.state in ACTIVE:
                try:
                    await self.node.StopVm(pb.StopVmRequest(vm_id=vm.id, force=True), timeout=10)
                except grpc.aio.AioRpcError as e:
                    if e.code() not in (grpc.StatusCode.NOT_FOUND,
                                        grpc.StatusCode.FAILED_PRECONDITION):
                        raise
            try:
                await self.node.DeleteVm(pb.DeleteVmRequest(vm_id=vm.id), timeout=10)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            gone.append(vm.id)
        await asyncio.gather(*(one(vm) for vm in vms
                               if LABEL_FLEET in vm.labels and doomed(vm)))
        return gone

    def _mine(self) -> dict[str, tuple]:
        out = {}
        for vm_id, kv in self.mirror.under("").items():
            a = Assignment.load(kv.value)
            if a.node == self.name:
                out[vm_id] = (kv, a)
        return out

    async def enforce(self) -> None:
        async with self._enforce_lock:
            if not self.mirror.synced.is_set():
                return
            mine = self._mine()

            seen = self.mirror.revision

            def wrong(vm) -> bool:
                if not self.live():
                    return True
                got = mine.get(vm.id)
                if got is None:
                    # From an assignment our watch has not delivered yet? Then it cannot
                    # have passed the gate either: leave it for the next look.
                    rev = vm.labels.get(LABEL_ASSIGNMENT, "")
                    return not (rev.isdigit() and int(rev) > seen)
                kv, a = got
                return (a.phase != RUN or kv.lease != self.lease
                        or vm.labels.get(LABEL_ASSIGNMENT) != str(kv.create_revision))
            stopped = await self._stop_fleet_vms(wrong)
            if stopped:
                log.info("fleet: stopped VMs not assigned here: %s", stopped)
            if not self.live():
                return
            present = {v.id for v in (await self.node.ListVms(pb.ListVmsRequest(),
                                                              timeout=10)).vms}
            for vm_id, (kv, a) in mine.items():
                if a.phase == RELEASE and kv.lease == self.lease and vm_id not in present:
                    await self.etcd.txn([cmp_mod(kv.key, kv.mod_revision)],
                                        [op_delete(kv.key)], retries=2)

    async def _enforcer(self) -> None:
        await self.tried.wait()
        while True:
            try:
                await asyncio.wait_for(self.kick.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            self.kick.clear()
            try:
                await self.enforce()
            except grpc.aio.AioRpcError as e:   # UNAVAILABLE: the server is shutting down
                (log.debug if e.code() == grpc.StatusCode.UNAVAILABLE else log.warning)(
                    "fleet: enforcement: %s: %s", e.code().name, e.details())
            except EtcdError as e:
                log.warning("fleet: enforcement: %s", e)

    async def _follow_node(self) -> None:
        """Any change to a fleet VM here (e.g. a late CreateVm) gets enforcement to look."""
        while True:
            try:
                async for ev in self.node.WatchVms(pb.WatchVmsRequest()):
                    if LABEL_FLEET in ev.vm.labels:
                        self.kick.set()
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.2)


def _jail_cgroup(cfg) -> str | None:
    from ..core.launcher import JailConfig
    jail = cfg.jail or JailConfig(os.path.join(cfg.state_dir, "jail"))
    return jail.parent_cgroup


async def run_with(serve, cfg, opts, args) -> None:
    """`nodesvc serve` with fleet registration: the gate goes into the node's spawn path,
    the agent runs beside the server and never outlives it."""
    labels = {}
    for item in args.fleet_label:
        k, eq, v = item.partition("=")
        if not eq:
            raise SystemExit(f"--fleet-label: want KEY=VAL, got {item!r}")
        labels[k] = v
    socket_path = os.path.abspath(opts.socket or os.path.join(cfg.state_dir, "nodesvc.sock"))
    agent = NodeAgent(endpoints=[e for e in args.fleet_etcd.split(",") if e],
                      name=args.node_name or socket.gethostname(),
                      advertise=args.advertise or f"unix://{socket_path}",
                      state_dir=cfg.state_dir, socket_path=socket_path, labels=labels,
                      ttl=args.fleet_lease_ttl, prefix=args.fleet_prefix,
                      cgroup_parent=None if cfg.no_jail else _jail_cgroup(cfg))
    cfg.start_gate = agent.start_gate
    task = asyncio.create_task(agent.run(), name="fleet-agent")
    try:
        await serve(cfg, opts)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
