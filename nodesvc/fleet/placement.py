"""Where a VM goes: filter the nodes (schedulable, selector, room, anti-affinity), then score
the rest (spread first, then the emptiest node). Pure functions of the controller's view, so
they are unit-tested without etcd or nodes.

Room is the fleet's own rule on top of each node's: memory never overcommits (a node refuses
what it cannot back), vCPUs at most `min(node's cpu_overcommit, fleet's)` per host CPU. A VM
counts against its node from the moment it is assigned until its assignment is deleted, so
one in RELEASE still holds its room (its VMM may still be stopping).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .model import Desired, NodeConf, NodeRecord, Placement


@dataclass
class NodeView:
    rec: NodeRecord
    conf: NodeConf = field(default_factory=NodeConf)
    vms: list[Desired] = field(default_factory=list)    # fleet VMs assigned here

    @property
    def name(self) -> str:
        return self.rec.name

    def used(self) -> tuple[int, int]:
        return (self.rec.other_memory_mib + sum(v.memory_mib for v in self.vms),
                self.rec.other_vcpus + sum(v.vcpus for v in self.vms))

    def limits(self, cpu_overcommit: float | None) -> tuple[int, int]:
        oc = self.rec.cpu_overcommit
        if cpu_overcommit is not None:
            oc = min(oc, cpu_overcommit)
        return self.rec.memory_mib, int(self.rec.cpus * oc)


def _matches(labels: dict, selector: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def why_not(vm: Desired, node: NodeView, cpu_overcommit: float | None) -> str | None:
    """None if the VM may go on this node, else the reason it may not."""
    p = Placement.of(vm.placement)
    if node.conf.cordoned or node.conf.draining:
        return "cordoned"
    if not _matches(node.rec.labels, p.node_selector):
        return "node selector"
    mem, vcpus = node.used()
    mem_max, vcpu_max = node.limits(cpu_overcommit)
    if mem + vm.memory_mib > mem_max:
        return f"memory ({mem_max - mem} MiB free)"
    if vcpus + vm.vcpus > vcpu_max:
        return f"vCPUs ({vcpu_max - vcpus} free)"
    for key in p.anti_affinity:
        if key in vm.labels and any(o.labels.get(key) == vm.labels[key] and o.id != vm.id
                                    for o in node.vms):
            return f"anti-affinity {key}={vm.labels[key]}"
    return None


def choose(vm: Desired, nodes: list[NodeView], *, cpu_overcommit: float | None = None,
           avoid: frozenset[str] = frozenset()) -> tuple[NodeView | None, dict[str, str]]:
    """(the chosen node or None, {node: reason} for every node ruled out)."""
    p = Placement.of(vm.placement)
    rejected: dict[str, str] = {}
    fit = []
    for n in nodes:
        why = "recently failed this VM" if n.name in avoid else why_not(vm, n, cpu_overcommit)
        if why:
            rejected[n.name] = why
        else:
            fit.append(n)
    if not fit:
        return None, rejected

    def domain(n: NodeView) -> str:
        return n.rec.labels.get(p.spread_by, "") if p.spread_by else n.name

    def in_group(o: Desired) -> bool:
        return all(o.labels.get(k) == vm.labels.get(k) for k in p.spread_match)
    per_domain = Counter()
    for n in nodes:
        per_domain[domain(n)] += sum(1 for o in n.vms if in_group(o) and o.id != vm.id)

    def score(n: NodeView):
        mem, _ = n.used()
        group_here = sum(1 for o in n.vms if in_group(o) and o.id != vm.id)
        return (per_domain[domain(n)], group_here, mem / max(1, n.rec.memory_mib), n.name)
    return min(fit, key=score), rejected
