"""Placement rules on hand-made views (no etcd, no nodes)."""

from __future__ import annotations

import pytest

from nodesvc.fleet.model import Desired, NodeConf, NodeRecord, Placement
from nodesvc.fleet.placement import NodeView, choose, why_not


def node(name, mem=1024, cpus=2, oc=4.0, labels=None, other_mem=0, **conf):
    return NodeView(NodeRecord(name, f"unix:///{name}", 1, labels or {}, cpus, mem, oc,
                               other_memory_mib=other_mem), NodeConf(**conf))


def vm(vm_id, mem=32, vcpus=1, labels=None, **placement):
    return Desired(vm_id, {"machine": {"vcpus": vcpus, "memoryMib": mem}}, labels or {},
                   placement)


def test_memory_never_overcommits_and_counts_other_vms():
    n = node("a", mem=100, other_mem=40)
    n.vms.append(vm("x", mem=32))
    assert why_not(vm("y", mem=28), n, None) is None
    assert "memory (28 MiB free)" == why_not(vm("y", mem=29), n, None)


def test_vcpus_follow_the_stricter_of_node_and_fleet_overcommit():
    n = node("a", cpus=2, oc=4.0)
    n.vms += [vm(f"v{i}", vcpus=1) for i in range(4)]
    assert why_not(vm("y", vcpus=4), n, None) is None          # 2 x 4 = 8
    assert why_not(vm("y", vcpus=1), n, 2.0).startswith("vCPUs (0 free)")   # 2 x 2 = 4


def test_selector_cordon_and_drain():
    assert why_not(vm("y", node_selector={"zone": "b"}), node("a", labels={"zone": "a"}),
                   None) == "node selector"
    assert why_not(vm("y"), node("a", cordoned=True), None) == "cordoned"
    assert why_not(vm("y"), node("a", draining=True), None) == "cordoned"


def test_anti_affinity_one_value_per_node():
    a, b = node("a"), node("b")
    a.vms.append(vm("db-0", labels={"app": "db"}))
    got, rejected = choose(vm("db-1", labels={"app": "db"}, anti_affinity=["app"]), [a, b])
    assert got is b and rejected == {"a": "anti-affinity app=db"}
    b.vms.append(vm("db-1", labels={"app": "db"}))
    got, rejected = choose(vm("db-2", labels={"app": "db"}, anti_affinity=["app"]), [a, b])
    assert got is None and set(rejected) == {"a", "b"}


def test_spread_by_zone_then_emptiest_node():
    a1, a2, b1 = (node("a1", labels={"zone": "a"}), node("a2", labels={"zone": "a"}),
                  node("b1", labels={"zone": "b"}))
    placed = []
    for i in range(6):
        v = vm(f"w{i}", labels={"app": "w"}, spread_by="zone", spread_match=["app"])
        n, _ = choose(v, [a1, a2, b1])
        n.vms.append(v)
        placed.append(n.name)
    assert placed.count("b1") == 3 and placed.count("a1") + placed.count("a2") == 3
    assert abs(placed.count("a1") - placed.count("a2")) <= 1


def test_avoid_skips_a_node_that_refused_the_vm():
    got, rejected = choose(vm("x"), [node("a"), node("b")], avoid=frozenset({"a"}))
    assert got.name == "b" and rejected == {"a": "recently failed this VM"}


@pytest.mark.parametrize("bad", [{"node_selector": ["x"]}, {"anti_affinity": "app"},
                                 {"spread_by": 3}, {"spread_match": [1]}])
def test_placement_shapes_are_checked(bad):
    with pytest.raises(ValueError):
        Placement.of(bad)
