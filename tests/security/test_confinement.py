"""What a VMM started by a real node service (jailed by default) can reach, checked from
the host through /proc: who it runs as, its namespaces, its cgroup and limits, its root,
and its open files."""

from __future__ import annotations

import os

import pytest

from nodesvc.api.v1 import nodesvc_pb2 as pb
from nodesvc_jailer import cgroup as cg
from tests.service.conftest import read_console_until, vm_spec

pytestmark = [pytest.mark.jail, pytest.mark.kvm]
ST = pb.VmState
ROOT_TREE = ["dev", "dev/kvm", "dev/net", "dev/net/tun", "dev/urandom", "run"]
RUN_FILES = {"config.json", "console.fifo", "control.sock", "log.fifo", "metrics.fifo",
             "vmm.stderr"}


@pytest.fixture(scope="module")
def vms(jailed_node, guest):
    """Two running idle VMs: (vm, vcpus) by id."""
    out = {}
    for vm_id, vcpus in (("conf-1", 1), ("conf-2", 2)):
        vm = jailed_node.stub.CreateVm(pb.CreateVmRequest(vm_id=vm_id, spec=vm_spec(
            guest("idle"), vcpus=vcpus), start=True), timeout=60).vm
        assert vm.state == ST.VM_STATE_RUNNING, vm.reason
        stream = jailed_node.stub.StreamConsole(pb.StreamConsoleRequest(
            vm_id=vm_id, include_history=True), timeout=20)
        read_console_until(stream, b"IDLE")     # the guest ran: every filter is in place
        stream.cancel()
        out[vm_id] = (vm, vcpus)
    return out


def test_unprivileged_no_capabilities_no_new_privs_seccomp(vms, probe):
    uids = set()
    for vm, vcpus in vms.values():
        st = probe.status(vm.vmm_pid)
        uid, gid = st["Uid"].split(), st["Gid"].split()
        assert len(set(uid)) == 1 and uid[0] != "0", st["Uid"]     # real, effective, saved, fs
        assert len(set(gid)) == 1 and gid[0] != "0", st["Gid"]
        assert st["Groups"] == ""
        uids.add(uid[0])
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(st[cap], 16) == 0, (cap, st[cap])
        assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
        assert st["NSpid"].split() == [str(vm.vmm_pid), "1"]       # pid 1 of its own pid ns
        # Every thread is filtered: the baseline plus its own kind's (vcpu, loop, control).
        threads = probe.threads(vm.vmm_pid)
        assert len(threads) >= vcpus + 2
        for tid, ts in threads.items():
            assert ts["Seccomp"] == "2" and int(ts["Seccomp_filters"]) >= 2, (tid, ts)
    assert len(uids) == len(vms)        # no uid shared by two live VMs


def test_vmm_is_pid_1_and_the_node_services_own_child(jailed_node, vms, probe):
    """Cloned by the zygote (CLONE_PARENT | CLONE_NEWPID): no process between the node
    and the VMM, which is pid 1 of its namespace."""
    for vm, _ in vms.values():
        st = probe.status(vm.vmm_pid)
        assert st["NSpid"].split() == [str(vm.vmm_pid), "1"]
        assert int(st["PPid"]) == jailed_node.proc.pid


def test_own_namespaces(vms, probe):
    host = probe.namespaces("self")
    seen = []
    for vm, _ in vms.values():
        ns = probe.namespaces(vm.vmm_pid)
        for kind in ns:
            assert ns[kind] != host[kind], f"{kind} namespace shared with the host"
        seen.append(ns)
    a, b = seen
    assert all(a[k] != b[k] for k in a), "two VMs share a namespace"


def test_cgroup_with_the_limits(jailed_node, vms, probe):
    if cg.detect_version() != 1:
        pytest.skip("host runs cgroup v2 (v2 is covered on a fake hierarchy in tests/jailer)")
    mounts = {opt: d for t, d, opts in cg.read_mounts() if t == "cgroup" for opt in opts}
    for vm_id, (vm, vcpus) in vms.items():
        groups = probe.cgroups(vm.vmm_pid)
        for ctrl in ("memory", "cpu", "pids"):
            path = groups[ctrl]
            assert path.startswith("/nodesvc/") and path.endswith("/" + vm_id), (ctrl, path)
        d = {c: mounts[c] + groups[c] for c in ("memory", "cpu", "pids")}

        def read(ctrl, name):
            with open(os.path.join(d[ctrl], name)) as f:
                return f.read().strip()
        assert int(read("memory", "memory.limit_in_bytes")) == (32 + 256) << 20
        assert int(read("pids", "pids.max")) == vcpus + 12
        assert int(read("cpu", "cpu.cfs_quota_us")) == int((vcpus + 0.5) * 100_000)
        assert int(read("cpu", "cpu.cfs_period_us")) == 100_000
        assert read("pids", "cgroup.procs").split() == [str(vm.vmm_pid)]   # alone in it


def test_root_holds_only_dev_and_run(jailed_node, vms, probe):
    for vm_id, (vm, _) in vms.items():
        tree = probe.root_tree(vm.vmm_pid)
        assert [p for p in tree if not p.startswith("run/")] == ROOT_TREE
        assert {p[4:] for p in tree if p.startswith("run/")} <= RUN_FILES | {"exit.json"}
        root = f"/proc/{vm.vmm_pid}/root"
        for host_path in ("etc/passwd", "proc", "sys", "usr", "tmp", jailed_node.socket[1:]):
            assert not os.path.lexists(os.path.join(root, host_path)), host_path
        assert os.readlink(f"/proc/{vm.vmm_pid}/cwd") == "/"


def test_open_files_are_the_vms_own(jailed_node, vms, guest):
    """Only what the VM was given: KVM objects, its memory, eventfds, pipes, sockets, the
    device nodes and run dir of its root, the kernel the node handed in, and the fault
    file (opened before pivot_root, beside the root)."""
    for vm_id, (vm, _) in vms.items():
        jail = os.path.join(jailed_node.state_dir, "jail", vm_id)
        allowed = {guest("idle"), os.path.join(jail, "fault")}
        for fd in os.listdir(f"/proc/{vm.vmm_pid}/fd"):
            try:
                target = os.readlink(f"/proc/{vm.vmm_pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            if target.startswith(("anon_inode:", "socket:", "pipe:", "/memfd:")):
                continue
            # seen from the host, the jail's /run and /dev are under its root
            if target.startswith((jail + "/root/run/", jail + "/root/dev/", "/run/", "/dev/")):
                continue
            assert target in allowed, f"VMM {vm.vmm_pid} holds fd {fd} -> {target}"
