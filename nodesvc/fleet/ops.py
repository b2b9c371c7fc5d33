"""Fleet-wide operations on etcd (what `nodectl fleet` runs): desired VMs in, views out.

Writes go only to the operator's keys (vms/, nodeconf/); the controller and nodes own the
rest. Every call is bounded by the client's etcd timeout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import AsyncIterator

from google.protobuf import json_format

from ..api.v1 import nodesvc_pb2 as pb
from .etcd import DELETE, Etcd, cmp_create, cmp_mod, op_put
from .model import (DEFAULT_PREFIX, NAME_RE, Assignment, Desired, Keys, NodeConf, NodeRecord,
                    Observed, Placement)


class FleetError(Exception):
    pass


@dataclass
class VmView:
    id: str
    desired: Desired
    assignment: Assignment | None
    status: Observed | None

    @property
    def node(self) -> str:
        return self.assignment.node if self.assignment else ""

    @property
    def state(self) -> str:
        return self.status.state if self.status else "PENDING"


@dataclass
class NodeView:
    name: str
    record: NodeRecord | None       # None: not registered (lease gone) but configured
    conf: NodeConf
    vms: int


class Fleet:
    def __init__(self, endpoints: list[str], prefix: str = DEFAULT_PREFIX,
                 timeout: float = 5.0):
        self.etcd = Etcd(endpoints, timeout=timeout)
        self.keys = Keys(prefix)

    async def close(self) -> None:
        await self.etcd.close()

    async def __aenter__(self) -> "Fleet":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def create(self, vm_id: str, spec: dict | pb.VmSpec, labels: dict | None = None,
                     placement: dict | None = None) -> Desired:
        if not NAME_RE.match(vm_id):
            raise FleetError(f"VM id {vm_id!r}: 1-64 letters, digits or '-'")
        if isinstance(spec, pb.VmSpec):
            spec = json_format.MessageToDict(spec)
        else:       # validate the shape now, not on a node later
            spec = json_format.MessageToDict(json_format.ParseDict(spec, pb.VmSpec()))
        try:
            Placement.of(placement)
        except ValueError as e:
            raise FleetError(str(e)) from None
        d = Desired(vm_id, spec, dict(labels or {}), dict(placement or {}), time.time())
        key = self.keys.vm(vm_id)
        r = await self.etcd.txn([cmp_create(key, 0)], [op_put(key, d.dump())], retries=2)
        if not r.succeeded:     # ours, if a timed-out first attempt did commit
            kv = await self.etcd.get(key)
            if kv is None or kv.value != d.dump():
                raise FleetError(f"fleet VM {vm_id!r} already exists")
        return d

    async def rm(self, vm_id: str) -> None:
        if not await self.etcd.delete(self.keys.vm(vm_id)):
            raise FleetError(f"no fleet VM {vm_id!r}")

    async def _all(self):
        kvs, rev = await self.etcd.range(self.keys.prefix)
        by = {}
        for kv in kvs:
            kind, name = self.keys.split(kv.key)
            by.setdefault(kind, {})[name] = kv
        return by, rev

    async def ls(self) -> list[VmView]:
        by, _ = await self._all()
        out = []
        for vm_id, kv in sorted(by.get("vms", {}).items()):
            a = by.get("assign", {}).get(vm_id)
            s = by.get("status", {}).get(vm_id)
            out.append(VmView(vm_id, Desired.load(kv.value),
                              Assignment.load(a.value) if a else None,
                              Observed.load(s.value) if s else None))
        return out

    async def get(self, vm_id: str) -> VmView:
        for v in await self.ls():
            if v.id == vm_id:
                return v
        raise FleetError(f"no fleet VM {vm_id!r}")

    async def nodes(self) -> list[NodeView]:
        by, _ = await self._all()
        names = set(by.get("nodes", {})) | set(by.get("nodeconf", {}))
        counts: dict[str, int] = {}
        for kv in by.get("assign", {}).values():
            a = Assignment.load(kv.value)
            counts[a.node] = counts.get(a.node, 0) + 1
        out = []
        for n in sorted(names):
            rec = by.get("nodes", {}).get(n)
            conf = by.get("nodeconf", {}).get(n)
            out.append(NodeView(n, NodeRecord.load(rec.value) if rec else None,
                                NodeConf.load(conf.value) if conf else NodeConf(),
                                counts.get(n, 0)))
        return out

    async def set_node(self, name: str, *, cordoned: bool | None = None,
                       draining: bool | None = None) -> NodeConf:
        key = self.keys.conf(name)
        for _ in range(10):     # read-modify-write under a revision compare
            kv = await self.etcd.get(key)
            conf = NodeConf.load(kv.value) if kv else NodeConf()
            if cordoned is not None:
                conf.cordoned = cordoned
            if draining is not None:
                conf.draining = draining
            r = await self.etcd.txn([cmp_mod(key, kv.mod_revision if kv else 0)],
                                    [op_put(key, conf.dump())], retries=2)
            if r.succeeded:
                return conf
        raise FleetError(f"node {name}: too many concurrent changes")

    async def watch(self, on_start=None) -> AsyncIterator[tuple[str, str, str, bytes]]:
        """(kind, name, 'put'|'delete', value) for every fleet change from now on;
        on_start(revision) once the starting point is fixed."""
        _, rev = await self.etcd.range(self.keys.leader)
        if on_start:
            on_start(rev)
        async for evs in self.etcd.watch(self.keys.prefix, rev + 1):
            for ev in evs:
                kind, name = self.keys.split(ev.kv.key)
                yield kind, name, "delete" if ev.type == DELETE else "put", ev.kv.value
