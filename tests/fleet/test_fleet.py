"""A fleet end to end: real etcd (3 members), 3 real node services, tiny guests, two
controllers. The tests share one fleet and run in order; each names its own VMs, and the
double-run checker (conftest) watches the whole time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from .cluster import wait_for
from .conftest import CONTROLLER_TTL, TTL

pytestmark = pytest.mark.kvm
#: Failover bound beyond the lease TTL: noticing the expiry, a placement transaction, a
#: VMM start on a loaded 2-core host.
FAILOVER_SLACK_S = 20


def no_double_run(fleet):
    assert fleet.checker.samples > 0
    assert not fleet.checker.violations, fleet.checker.violations[:5]


def test_placement_respects_capacity_and_constraints(fleet):
    ids = []
    for i in range(3):      # one db per node: anti-affinity on "app"
        fleet.create(f"db-{i}", {"app": "db"}, {"anti_affinity": ["app"]})
        ids.append(f"db-{i}")
    for i in range(6):      # zone b only
        fleet.create(f"edge-{i}", {"app": "edge"}, {"node_selector": {"zone": "b"}})
        ids.append(f"edge-{i}")
    for i in range(21):
        fleet.create(f"web-{i}", {"app": "web"}, {"spread_by": "zone", "spread_match": ["app"]})
        ids.append(f"web-{i}")
    fleet.create("huge", {"app": "huge"}, memory_mib=600)      # fits no node
    vs = fleet.wait_running(ids)

    assert len({vs[f"db-{i}"].node for i in range(3)}) == 3
    assert {vs[f"edge-{i}"].node for i in range(6)} == {"n3"}
    for name, node in fleet.nodes.items():
        here = [v for v in vs.values() if v.node == name]
        assert sum(v.desired.memory_mib for v in here) <= node.memory_mib
    assert vs["huge"].state == "PENDING"
    assert "memory" in vs["huge"].status.reason

    # The view in etcd matches what every node's own API says.
    for name in fleet.nodes:
        on_node = {i for i, v in fleet.node_vms(name).items() if v.state == 3}  # RUNNING
        in_etcd = {i for i, v in vs.items() if v.node == name and v.state == "RUNNING"}
        assert on_node == in_etcd, name
        for i in on_node:
            assert vs[i].status.assignment == int(
                fleet.node_vms(name)[i].labels["fleet.nodesvc/assignment"])
    # Keep the rest of the module's fleet small enough that one node's VMs fit on the
    # other two.
    for i in ["huge", *(f"web-{i}" for i in range(3, 21))]:
        fleet.call(lambda f, i=i: f.rm(i))
    no_double_run(fleet)


def test_rm_stops_and_deletes_on_the_node(fleet):
    fleet.create("tmp-1", {"app": "tmp"})
    vs = fleet.wait_running(["tmp-1"])
    node = vs["tmp-1"].node
    fleet.call(lambda f: f.rm("tmp-1"))
    wait_for(lambda: "tmp-1" not in fleet.node_vms(node) and "tmp-1" not in fleet.ls(),
             30, "tmp-1 gone from node and etcd")
    assert fleet.call(lambda f: f.etcd.get(f.keys.assignment("tmp-1"))) is None


def nodectl(fleet, *args, check=True) -> str:
    r = subprocess.run([sys.executable, "-m", "nodesvc_client.cli", "fleet", "--etcd",
                        ",".join(fleet.etcd.endpoints), *args], capture_output=True,
                       text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r.stdout if check else r


def test_nodectl_fleet(fleet, tmp_path):
    f = tmp_path / "vm.yaml"
    f.write_text(json.dumps({"vm_id": "cli-1", "labels": {"app": "cli"},
                             "placement": {"node_selector": {"zone": "a"}},
                             "spec": {"machine": {"vcpus": 1, "memory_mib": 32},
                                      "boot": {"kernel_path": fleet.kernel}}}))
    watch = subprocess.Popen([sys.executable, "-m", "nodesvc_client.cli", "fleet", "--etcd",
                              ",".join(fleet.etcd.endpoints), "watch"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[list[str]] = []
    reader = threading.Thread(target=lambda: [lines.append(x.split()[1:]) for x in
                                              watch.stdout], daemon=True)
    try:
        assert watch.stderr.readline().startswith("# watching /nodesvc/fleet/ after revision")
        reader.start()
        assert "cli-1: created" in nodectl(fleet, "create", "-f", str(f), "--anti-affinity",
                                           "app")
        fleet.wait_running(["cli-1"], timeout=60)
        # Other VMs may be moving meanwhile: look for cli-1's own events, in order.
        wait_for(lambda: [x[:3] for x in lines if x[2:3] == ["cli-1"]][:2] == [
            ["vms", "put", "cli-1"], ["assign", "put", "cli-1"]], 10, "cli-1's watch events")
    finally:
        watch.kill()
        watch.wait()
    got = json.loads(nodectl(fleet, "get", "cli-1", "-o", "json"))
    assert got["desired"]["placement"] == {"node_selector": {"zone": "a"},
                                           "anti_affinity": ["app"]}
    assert got["assignment"]["node"] in ("n1", "n2") and got["status"]["state"] == "RUNNING"
    ls = nodectl(fleet, "ls")
    assert ls.splitlines()[0].split() == ["ID", "NODE", "STATE", "LABELS", "REASON"]
    assert any(line.split()[:3] == ["cli-1", got["assignment"]["node"], "RUNNING"]
               for line in ls.splitlines())
    assert "n3: cordoned" in nodectl(fleet, "cordon", "n3")
    nodes = {line.split()[0]: line.split()[1] for line in nodectl(fleet, "nodes").splitlines()[1:]}
    assert nodes == {"n1": "ready", "n2": "ready", "n3": "cordoned"}
    nodectl(fleet, "uncordon", "n3")
    assert "removed" in nodectl(fleet, "rm", "cli-1")
    r = nodectl(fleet, "rm", "cli-1", check=False)
    assert r.returncode == 1 and r.stderr.strip() == "nodectl: fleet: no fleet VM 'cli-1'"
    wait_for(lambda: "cli-1" not in fleet.ls(), 30, "cli-1 gone")


def test_kill_one_etcd_member_operations_continue(fleet):
    victim = fleet.etcd.leader_index()
    assert victim is not None
    before = {i: v for i, v in fleet.node_vms("n1").items()}
    fleet.etcd.kill_member(victim)
    try:
        fleet.create("etcd-down-1", {"app": "x"})
        fleet.create("etcd-down-2", {"app": "x"})
        fleet.wait_running(["etcd-down-1", "etcd-down-2"], timeout=60)
        # The nodes kept their leases: nothing was fenced or restarted.
        after = fleet.node_vms("n1")
        for i, v in before.items():
            assert after[i].start_count == v.start_count and after[i].state == v.state
        assert fleet.registered() == set(fleet.nodes)
    finally:
        fleet.etcd.restart_member(victim)
    no_double_run(fleet)


def test_kill_leading_controller_another_leads_and_converges(fleet):
    leader = fleet.leader()
    assert leader in fleet.controllers
    fleet.controllers[leader].kill()
    try:
        fleet.create("after-leader-1", {"app": "y"})
        fleet.create("after-leader-2", {"app": "y"})
        vs = fleet.wait_running(["after-leader-1", "after-leader-2"], timeout=CONTROLLER_TTL + 60)
        new = fleet.leader()
        assert new is not None and new != leader
        # Nothing was duplicated: every VM is on exactly one node, once.
        seen = {}
        for name in fleet.nodes:
            for i in fleet.node_vms(name):
                assert i not in seen, (i, seen.get(i), name)
                seen[i] = name
        assert {i for i, v in vs.items() if v.state == "RUNNING"} <= set(seen)
    finally:
        fleet.controllers[leader].start()
    no_double_run(fleet)


def test_drain_moves_vms_and_takes_no_new_ones(fleet):
    vs = fleet.ls()
    had = {i for i, v in vs.items() if v.node == "n2" and not i.startswith("db-")}
    db = {i for i, v in vs.items() if v.node == "n2" and i.startswith("db-")}
    assert had
    fleet.call(lambda f: f.set_node("n2", cordoned=True, draining=True))
    try:
        fleet.wait_running(had, timeout=60, avoid={"n2"})
        wait_for(lambda: not fleet.node_vms("n2"), 30, "n2 without fleet VMs")
        for i in db:        # one db per node: nowhere to go while n2 drains
            assert fleet.ls()[i].state == "PENDING"
        fleet.create("while-drained", {"app": "z"})
        vs = fleet.wait_running(["while-drained"], timeout=60)
        assert vs["while-drained"].node != "n2"
    finally:
        fleet.call(lambda f: f.set_node("n2", cordoned=False, draining=False))
    fleet.wait_running(db, timeout=60)
    no_double_run(fleet)


def test_sigkill_node_its_vms_run_elsewhere(fleet):
    victim = fleet.nodes["n1"]
    vs = fleet.ls()
    # db-* keep one per node (anti-affinity): n1's has nowhere else to go until n1 is back.
    had = {i for i, v in vs.items() if v.node == "n1" and not i.startswith("db-")}
    stuck = {i for i, v in vs.items() if v.node == "n1" and i.startswith("db-")}
    assert had
    victim.kill_all()
    try:
        fleet.wait_running(had, timeout=TTL + FAILOVER_SLACK_S, avoid={"n1"})
        for i in stuck:
            assert fleet.ls()[i].state == "PENDING"
            assert "anti-affinity" in fleet.ls()[i].status.reason
    finally:
        victim.start()
        fleet.wait_nodes({"n1"})
    fleet.wait_running(stuck, timeout=60)
    # The restarted node runs none of what it ran before, except what was placed there anew.
    assert all(fleet.ls()[i].node == "n1" for i in set(fleet.node_vms("n1")) & had)
    no_double_run(fleet)


def test_sigstop_node_past_its_lease_fences_itself(fleet):
    victim = fleet.nodes["n3"]
    vs = fleet.ls()
    # edge-* may only run in zone b and db-* one per node: those wait for n3 to come back.
    had = {i for i, v in vs.items() if v.node == "n3" and not i.startswith(("edge-", "db-"))}
    waits = {i for i, v in vs.items() if v.node == "n3"} - had
    vmms = victim.vmm_pids()
    assert vmms
    os.kill(victim.proc.pid, signal.SIGSTOP)
    try:
        # Frozen service: the fence watchdog kills its fleet VMMs before the lease can
        # expire; only then are they placed elsewhere.
        wait_for(lambda: not victim.vmm_pids(), TTL + 5, "n3's VMMs killed while it is frozen")
        fleet.wait_running(had, timeout=TTL + FAILOVER_SLACK_S, avoid={"n3"})
    finally:
        os.kill(victim.proc.pid, signal.SIGCONT)
    # Awake again: it fences (stops and forgets its old fleet VMs) and registers anew.
    wait_for(lambda: "fencing n3" in victim.log_text(), 20, "n3 fences after SIGCONT")
    assert "killed fleet VMMs" in open(os.path.join(victim.state_dir, "fleet",
                                                    "fence.log")).read()
    fleet.wait_nodes({"n3"})
    fleet.wait_running(waits, timeout=60)
    now = fleet.ls()
    assert all(now[i].node == "n3" for i in fleet.node_vms("n3"))
    no_double_run(fleet)
