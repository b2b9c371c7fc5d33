"""The fleet controller: desired VMs in etcd -> assignments -> VMs on nodes -> status in etcd.

Every controller mirrors the fleet prefix; the leader (election.py) also reconciles:
  1. release: a RUN assignment whose VM was removed, or whose node drains, goes to RELEASE
     (the node stops the VM, then deletes the assignment: the VM is placed again only then);
  2. place: a desired VM without an assignment gets one, on the node placement.choose picks,
     by a transaction that also checks the leader term, that the assignment is still absent,
     the desired record and the node's registration unchanged; the key is put under the
     *node's* lease, so it vanishes when the node's lease does;
  3. drive: over each node's gRPC API, create and start the VM of each RUN assignment
     (labels carry the fleet id and the assignment revision, which the node's gate checks),
     restart it when it ended; each node's WatchVms keeps the leader's view of it current;
  4. record: what each node reports goes to status/<id> (only when it changed).
All of it is recomputed from etcd and the nodes on every pass, so a new leader simply
resumes: a second placement of the same VM is impossible (create-if-absent), a second
CreateVm of it is refused by the node (same id), and a stale one by the node's gate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

import grpc

from ..api.v1 import nodesvc_pb2 as pb
from .election import Leadership
from .etcd import Etcd, EtcdError, cmp_create, cmp_mod, op_delete, op_put
from .mirror import Mirror
from .model import (DEFAULT_PREFIX, LABEL_ASSIGNMENT, LABEL_FLEET, RELEASE, RUN, Assignment,
                    Desired, Keys, NodeConf, NodeRecord, Observed)
from .nodeconn import TlsFiles, open_node, spec_from_json, state_name
from .placement import NodeView, choose

log = logging.getLogger("nodesvc.fleet.controller")
ENDED = (pb.VM_STATE_CREATED, pb.VM_STATE_STOPPED, pb.VM_STATE_FAILED)
AVOID_S = 30.0              # after a node refused a VM, try other nodes for this long
RESTART_BACKOFF_S = 1.0


class NodeLink:
    """The leader's view of one node's fleet VMs: ListVms, then WatchVms from its revision."""

    def __init__(self, name: str, rec: NodeRecord, node_rev: int, tls: TlsFiles | None,
                 on_change, inflight: int):
        self.name, self.endpoint, self.node_rev = name, rec.endpoint, node_rev
        self.channel, self.stub = open_node(rec.endpoint, tls)
        self.vms: dict[str, pb.Vm] = {}
        self.synced = False
        self.on_change = on_change
        self.slots = asyncio.Semaphore(inflight)
        self.task = asyncio.create_task(self._follow(), name=f"link-{name}")

    async def _follow(self) -> None:
        while True:
            try:
                r = await self.stub.ListVms(pb.ListVmsRequest(), timeout=10)
                self.vms = {v.id: v for v in r.vms if LABEL_FLEET in v.labels}
                self.synced = True
                self.on_change()
                async for ev in self.stub.WatchVms(
                        pb.WatchVmsRequest(since_revision=r.revision)):
                    if LABEL_FLEET not in ev.vm.labels:
                        continue
                    if ev.type == pb.VmEvent.TYPE_DELETED:
                        self.vms.pop(ev.vm.id, None)
                    else:
                        self.vms[ev.vm.id] = ev.vm
                    self.on_change()
            except grpc.aio.AioRpcError as e:
                if self.synced:
                    log.warning("node %s: %s", self.name, e.code().name)
                self.synced = False
                self.on_change()
                await asyncio.sleep(0.3)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.channel.close()


class Controller:
    def __init__(self, endpoints: list[str], identity: str, *, prefix: str = DEFAULT_PREFIX,
                 ttl: int = 5, node_tls: TlsFiles | None = None,
                 cpu_overcommit: float | None = None, inflight_per_node: int = 4):
        self.endpoints, self.identity = endpoints, identity
        self.keys = Keys(prefix)
        self.ttl, self.node_tls, self.cpu_overcommit = ttl, node_tls, cpu_overcommit
        self.inflight_per_node = inflight_per_node
        self.links: dict[str, NodeLink] = {}
        self.tasks: dict[str, asyncio.Task] = {}        # per VM: create/start in flight
        self.avoid: dict[str, dict[str, float]] = {}    # vm -> node -> until
        self.failed: dict[str, str] = {}                # vm -> why its node refused it
        self.restarted: dict[str, float] = {}
        self.known: dict[str, Desired] = {}             # last desired record seen per VM
        self.kick = asyncio.Event()
        self.passes = 0
        self.placements = 0

    async def run(self) -> None:
        self.etcd = Etcd(self.endpoints)
        self.mirror = Mirror(self.etcd, self.keys.prefix, on_events=lambda _: self.kick.set())
        self.election = Leadership(self.etcd, self.keys.leader, self.identity, self.ttl)
        bg = [asyncio.create_task(self.mirror.run(), name="mirror"),
              asyncio.create_task(self.election.run(), name="election")]
        try:
            while True:
                try:
                    await asyncio.wait_for(self.kick.wait(), 0.5)
                    await asyncio.sleep(0.01)       # let a burst of events land first
                except asyncio.TimeoutError:
                    pass
                self.kick.clear()
                if not (self.election.leading() and self.mirror.synced.is_set()):
                    await self._drop_links()
                    continue
                try:
                    await self.reconcile()
                except EtcdError as e:
                    log.warning("reconcile: %s", e)
        finally:
            await self._drop_links()
            await self.election.resign()
            for t in bg:
                t.cancel()
            await asyncio.gather(*bg, return_exceptions=True)
            await self.etcd.close()

    async def _drop_links(self) -> None:
        for t in self.tasks.values():
            t.cancel()
        self.tasks.clear()
        for link in self.links.values():
            await link.close()
        self.links.clear()

    # ------------------------------------------------------------------ the view
    def _view(self):
        m = self.mirror
        nodes = {n: (kv, NodeRecord.load(kv.value)) for n, kv in m.under("nodes/").items()}
        confs = {n: NodeConf.load(kv.value) for n, kv in m.under("nodeconf/").items()}
        desired = {i: (kv, Desired.load(kv.value)) for i, kv in m.under("vms/").items()}
        assigns = {i: (kv, Assignment.load(kv.value)) for i, kv in m.under("assign/").items()}
        status = {i: (kv, Observed.load(kv.value)) for i, kv in m.under("status/").items()}
        for i, (_, d) in desired.items():
            self.known[i] = d
        return nodes, confs, desired, assigns, status

    async def _sync_links(self, nodes) -> None:
        for name in list(self.links):
            link = self.links[name]
            got = nodes.get(name)
            if got is None or got[0].create_revision != link.node_rev \
                    or got[1].endpoint != link.endpoint:
                del self.links[name]
                await link.close()
        for name, (kv, rec) in nodes.items():
            if name not in self.links:
                self.links[name] = NodeLink(name, rec, kv.create_revision, self.node_tls,
                                            self.kick.set, self.inflight_per_node)

    async def _write(self, compare, ops) -> bool:
        # Retried: a first attempt that did commit makes the retry's compare fail, and the
        # next pass sees the write in the mirror.
        r = await self.etcd.txn([self.election.guard(), *compare], ops, retries=2)
        return r.succeeded

    # ------------------------------------------------------------------ one pass
    async def reconcile(self) -> None:
        self.passes += 1
        nodes, confs, desired, assigns, status = self._view()
        await self._sync_links(nodes)
        now = time.monotonic()

        # 1. release
        for vm_id, (kv, a) in assigns.items():
            conf = confs.get(a.node, NodeConf())
            why = ("removed" if vm_id not in desired else "node draining" if conf.draining
                   else self.failed.get(vm_id))
            if a.phase == RUN and why:
                log.info("%s: releasing from %s (%s)", vm_id, a.node, why)
                await self._write([cmp_mod(kv.key, kv.mod_revision)],
                                  [op_put(kv.key, replace(a, phase=RELEASE).dump(), kv.lease)])
        # 2. place
        views = {n: NodeView(rec, confs.get(n, NodeConf())) for n, (_, rec) in nodes.items()}
        for vm_id, (_, a) in assigns.items():
            d = self.known.get(vm_id)
            if d is not None and a.node in views:
                views[a.node].vms.append(d)
        placed: dict[str, tuple[int, str]] = {
            i: (kv.create_revision, a.node) for i, (kv, a) in assigns.items() if a.phase == RUN}
        pending: dict[str, str] = {}
        for vm_id, (dkv, d) in sorted(desired.items(), key=lambda x: x[1][0].create_revision):
            if vm_id in assigns:
                continue
            self.failed.pop(vm_id, None)
            avoid = frozenset(n for n, t in self.avoid.get(vm_id, {}).items() if t > now)
            node, rejected = choose(d, list(views.values()), cpu_overcommit=self.cpu_overcommit,
                                    avoid=avoid)
            if node is None:
                pending[vm_id] = "no node fits: " + (", ".join(
                    f"{n}: {w}" for n, w in sorted(rejected.items())) or "no nodes")
                continue
            nkv = nodes[node.name][0]
            akey = self.keys.assignment(vm_id)
            ckv = self.mirror.get(self.keys.conf(node.name))
            a = Assignment(node.name, nkv.lease, RUN, time.time(), self.election.term)
            r = await self.etcd.txn(
                [self.election.guard(), cmp_create(akey, 0), cmp_mod(dkv.key, dkv.mod_revision),
                 cmp_create(nkv.key, nkv.create_revision),
                 cmp_mod(self.keys.conf(node.name), ckv.mod_revision if ckv else 0)],
                [op_put(akey, a.dump(), nkv.lease)], retries=2)
            if not r.succeeded:
                break           # the world moved; the next pass sees it
            self.placements += 1
            node.vms.append(d)
            placed[vm_id] = (r.header.revision, node.name)
        # 3. drive
        for vm_id, (rev, node) in placed.items():
            d = desired.get(vm_id, (None, None))[1]
            link = self.links.get(node)
            if d is None or link is None or not link.synced or vm_id in self.tasks:
                continue
            vm = link.vms.get(vm_id)
            if vm is None:
                self._spawn(vm_id, self._create(link, d, rev))
            elif vm.labels.get(LABEL_ASSIGNMENT) != str(rev):
                continue        # a VM of an older assignment: the node removes it
            elif vm.state in ENDED and now - self.restarted.get(vm_id, 0) > RESTART_BACKOFF_S:
                self.restarted[vm_id] = now
                self._spawn(vm_id, self._start(link, vm_id))
        # 4. record
        await self._record(desired, assigns, placed, pending, status)

    def _spawn(self, vm_id: str, coro) -> None:
        t = asyncio.create_task(coro, name=f"drive-{vm_id}")
        self.tasks[vm_id] = t

        def done(_):
            if self.tasks.get(vm_id) is t:
                del self.tasks[vm_id]
            self.kick.set()
        t.add_done_callback(done)

    def _refused(self, vm_id: str, node: str, why: str) -> None:
        log.warning("%s: node %s refused it: %s", vm_id, node, why)
        self.failed[vm_id] = f"{node}: {why}"
        self.avoid.setdefault(vm_id, {})[node] = time.monotonic() + AVOID_S

    async def _create(self, link: NodeLink, d: Desired, rev: int) -> None:
        labels = {**d.labels, LABEL_FLEET: d.id, LABEL_ASSIGNMENT: str(rev)}
        async with link.slots:
            try:
                await link.stub.CreateVm(pb.CreateVmRequest(
                    vm_id=d.id, spec=spec_from_json(d.spec), labels=labels), timeout=30)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.ALREADY_EXISTS:
                    return      # the watch shows which assignment it belongs to
                if e.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                grpc.StatusCode.RESOURCE_EXHAUSTED):
                    return self._refused(d.id, link.name, e.details())
                log.info("%s: create on %s: %s", d.id, link.name, e.code().name)
                return
            await self._start_locked(link, d.id)

    async def _start(self, link: NodeLink, vm_id: str) -> None:
        async with link.slots:
            await self._start_locked(link, vm_id)

    async def _start_locked(self, link: NodeLink, vm_id: str) -> None:
        # The node's gate may not have seen the assignment yet (its etcd watch is a few ms
        # behind our transaction): retry that refusal briefly; anything else is final.
        for attempt in range(40):
            try:
                await link.stub.StartVm(pb.StartVmRequest(vm_id=vm_id), timeout=60)
                return
            except grpc.aio.AioRpcError as e:
                msg = e.details() or ""
                if e.code() == grpc.StatusCode.FAILED_PRECONDITION and "fleet fence" in msg:
                    await asyncio.sleep(min(0.5, 0.02 * (attempt + 1)))
                    continue
                if e.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,) or (
                        e.code() == grpc.StatusCode.FAILED_PRECONDITION
                        and "failed to start" in msg):
                    return self._refused(vm_id, link.name, msg)
                log.info("%s: start on %s: %s %s", vm_id, link.name, e.code().name, msg)
                return

    async def _record(self, desired, assigns, placed, pending, status) -> None:
        want: dict[str, Observed] = {}
        for vm_id in desired:
            if vm_id in pending:
                want[vm_id] = Observed("", "PENDING", pending[vm_id])
                continue
            got = assigns.get(vm_id)
            if got and got[1].phase == RELEASE:
                want[vm_id] = Observed(got[1].node, "RELEASING", self.failed.get(vm_id, ""),
                                       got[0].create_revision)
                continue
            if vm_id not in placed:
                continue
            rev, node = placed[vm_id]
            link = self.links.get(node)
            vm = link.vms.get(vm_id) if link and link.synced else None
            if link is None or not link.synced:
                want[vm_id] = Observed(node, "UNKNOWN", "node not reachable", rev)
            elif vm is None or vm.labels.get(LABEL_ASSIGNMENT) != str(rev):
                want[vm_id] = Observed(node, "PLACED", "", rev)
            else:
                want[vm_id] = Observed(node, state_name(vm.state), vm.reason, rev, vm.revision)
        for vm_id, obs in want.items():
            cur = status.get(vm_id)
            if cur and (cur[1].node, cur[1].state, cur[1].reason, cur[1].assignment) == (
                    obs.node, obs.state, obs.reason, obs.assignment):
                continue
            obs.time = time.time()
            await self._write([], [op_put(self.keys.state(vm_id), obs.dump())])
        for vm_id, (kv, _) in status.items():
            if vm_id not in desired:
                await self._write([cmp_mod(kv.key, kv.mod_revision)], [op_delete(kv.key)])
