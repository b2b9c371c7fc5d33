"""Pieces of the jailer that need no privilege: uid allocation, the cgroup v1/v2 drivers on
a fake hierarchy, fd passing, the filter tables."""

from __future__ import annotations

import os
import socket

import pytest

from nodesvc.vmm.kvm import ioctls as kvm
from nodesvc_jailer import cgroup as cg, seccomp
from nodesvc_jailer.fdpass import FdPassError, recv_fds, send_fds
from nodesvc_jailer.uids import UidAllocator, UidExhausted


# -- uids ---------------------------------------------------------------------------------
def test_uids_unique_persisted_released(tmp_path):
    a = UidAllocator(str(tmp_path), 1000, 1003)
    got = [a.allocate(f"vm{i}") for i in range(4)]
    assert sorted(got) == [1000, 1001, 1002, 1003]
    assert a.allocate("vm2") == got[2]                  # same VM, same number
    with pytest.raises(UidExhausted):
        a.allocate("vm9")
    b = UidAllocator(str(tmp_path), 1000, 1003)         # a restarted node
    assert b.owned() == {u: f"vm{i}" for i, u in enumerate(got)}
    b.release("vm1")
    b.release("vm1")                                    # idempotent
    assert b.allocate("vm9") == got[1]
    assert b.uid_of("vm9") == got[1] and b.uid_of("vm1") is None


def test_a_released_uid_is_not_reused_at_once(tmp_path):
    a = UidAllocator(str(tmp_path), 2000, 2009)
    first = a.allocate("a")
    a.allocate("b")
    a.release("a")
    assert a.allocate("c") != first


# -- cgroups ------------------------------------------------------------------------------
def _fake(tmp_path, lines: list[str]) -> str:
    mounts = tmp_path / "mounts"
    mounts.write_text("".join(line.format(root=tmp_path) + "\n" for line in lines))
    return str(mounts)


def test_version_detection(tmp_path):
    hybrid = _fake(tmp_path, ["cgroup {root}/memory cgroup rw,memory 0 0",
                              "cgroup2 {root}/unified cgroup2 rw 0 0"])
    assert cg.detect_version(hybrid) == 1
    (tmp_path / "mounts").write_text(f"cgroup2 {tmp_path}/cg cgroup2 rw,nsdelegate 0 0\n")
    assert cg.detect_version(str(tmp_path / "mounts")) == 2
    (tmp_path / "mounts").write_text("proc /proc proc rw 0 0\n")
    with pytest.raises(cg.CgroupError):
        cg.detect_version(str(tmp_path / "mounts"))


def test_v2_driver_on_a_fake_hierarchy(tmp_path):
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    mounts = _fake(tmp_path, ["cgroup2 {root}/cg cgroup2 rw 0 0"])
    group = cg.Cgroup(2, "vm-1", "nodesvc/tenant", mounts)
    limits = cg.Limits(memory_bytes=300 << 20, cpus=1.5, pids=12, raw={"cpuset.cpus": "0"})
    # a kernel makes the interface files; the fake has to (subtree_control, swap)
    for d in (root / "nodesvc", root / "nodesvc" / "tenant", root / "nodesvc/tenant/vm-1"):
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.subtree_control").write_text("")
    (root / "nodesvc/tenant/vm-1/memory.swap.max").write_text("max")
    leaves = group.create(limits.properties(2))
    leaf = root / "nodesvc/tenant/vm-1"
    assert leaves == [str(leaf)]
    for d in (root, root / "nodesvc", root / "nodesvc/tenant"):
        assert (d / "cgroup.subtree_control").read_text() == "+cpu +cpuset +memory +pids"
    assert (leaf / "memory.max").read_text() == str(300 << 20)
    assert (leaf / "memory.swap.max").read_text() == "0"
    assert (leaf / "cpu.max").read_text() == "150000 100000"
    assert (leaf / "pids.max").read_text() == "12"
    assert (leaf / "cpuset.cpus").read_text() == "0"
    group.attach(4242)
    assert (leaf / "cgroup.procs").read_text() == "4242"
    assert group.existing_dirs() == [str(leaf)]


def test_v2_refuses_missing_controllers(tmp_path):
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("memory\n")
    mounts = _fake(tmp_path, ["cgroup2 {root}/cg cgroup2 rw 0 0"])
    with pytest.raises(cg.CgroupError, match="pids"):
        cg.Cgroup(2, "vm-1", "nodesvc", mounts).create({"pids.max": "4"})


def test_v1_driver_on_a_fake_hierarchy(tmp_path):
    for c in ("cpu,cpuacct", "memory", "pids", "cpuset"):
        (tmp_path / c).mkdir()
    (tmp_path / "cpuset" / "cpuset.cpus").write_text("0-1\n")
    (tmp_path / "cpuset" / "cpuset.mems").write_text("0\n")
    (tmp_path / "cpuset" / "nodesvc").mkdir()
    for f in ("cpuset.cpus", "cpuset.mems"):        # a new v1 cpuset starts empty
        (tmp_path / "cpuset" / "nodesvc" / f).write_text("")
    (tmp_path / "cpuset" / "nodesvc" / "vm-1").mkdir()
    for f in ("cpuset.cpus", "cpuset.mems"):
        (tmp_path / "cpuset" / "nodesvc" / "vm-1" / f).write_text("")
    mounts = _fake(tmp_path, ["cgroup {root}/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0",
                              "cgroup {root}/memory cgroup rw,memory 0 0",
                              "cgroup {root}/pids cgroup rw,pids 0 0",
                              "cgroup {root}/cpuset cgroup rw,cpuset 0 0",
                              "cgroup2 {root}/unified cgroup2 rw 0 0"])
    group = cg.Cgroup(1, "vm-1", "nodesvc", mounts)
    props = cg.Limits(memory_bytes=64 << 20, cpus=0.5, pids=9,
                      raw={"cpuset.mems": "0"}).properties(1)
    leaves = group.create(props)
    assert sorted(leaves) == sorted(str(tmp_path / c / "nodesvc/vm-1")
                                    for c in ("cpu,cpuacct", "memory", "pids", "cpuset"))
    assert (tmp_path / "memory/nodesvc/vm-1/memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (tmp_path / "cpu,cpuacct/nodesvc/vm-1/cpu.cfs_quota_us").read_text() == "50000"
    assert (tmp_path / "pids/nodesvc/vm-1/pids.max").read_text() == "9"
    # cpuset.cpus inherited top-down from the root, as Firecracker does
    assert (tmp_path / "cpuset/nodesvc/cpuset.cpus").read_text() == "0-1"
    assert (tmp_path / "cpuset/nodesvc/vm-1/cpuset.cpus").read_text() == "0-1"


# -- fd passing ---------------------------------------------------------------------------
def test_fds_cross_a_unix_socket(tmp_path):
    f = tmp_path / "kernel"
    f.write_bytes(b"vmlinux bytes")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    fd = os.open(f, os.O_RDONLY)
    try:
        send_fds(a, b'{"op":"attach"}', [fd, w])
        msg, fds = recv_fds(b)
        assert msg == b'{"op":"attach"}' and len(fds) == 2
        assert os.pread(fds[0], 7, 0) == b"vmlinux"
        os.write(fds[1], b"ok")
        assert os.read(r, 2) == b"ok"
        assert all(not os.get_inheritable(x) for x in fds)  # O_CLOEXEC on arrival
        for x in fds:
            os.close(x)
        a.close()
        assert recv_fds(b) == (b"", [])
    finally:
        for x in (fd, r, w):
            os.close(x)
        b.close()


def test_too_many_fds_are_refused_and_closed():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    fds = [os.dup(0) for _ in range(4)]
    before = set(os.listdir("/proc/self/fd"))
    try:
        send_fds(a, b"x", fds)
        with pytest.raises(FdPassError):
            recv_fds(b, maxfds=2)
        assert set(os.listdir("/proc/self/fd")) == before
        with pytest.raises(ValueError):
            send_fds(a, b"", fds)
    finally:
        for x in fds:
            os.close(x)
        a.close(), b.close()


# -- filter tables ------------------------------------------------------------------------
def test_vcpu_filter_is_the_narrowest():
    vcpu, loop, control = (seccomp.rules(k) for k in ("vcpu", "loop", "control"))
    for name in ("openat", "socket", "connect", "execve", "clone", "kill", "mount", "ptrace"):
        assert name not in vcpu, name
    assert {c[0][3] for c in vcpu["ioctl"]} == {kvm.KVM_RUN, kvm.KVM_GET_REGS,
                                                 kvm.KVM_GET_SREGS, kvm.KVM_TRANSLATE,
                                                 seccomp.TUNSETOFFLOAD}   # net activation
    assert not {c[0][3] for c in loop["ioctl"]} & set(kvm.TABLE.values())
    for kind in ("loop", "control"):
        assert seccomp.rules(kind)["socket"] == [((0, 4, 1),)]     # EQ AF_UNIX only
    for kind in seccomp.KINDS:
        rules = seccomp.rules(kind)
        for name in ("execve", "execveat", "fork", "vfork", "ptrace", "kill", "mount",
                     "unshare", "setns", "chroot", "pivot_root", "init_module", "bpf",
                     "process_vm_writev", "setuid", "keyctl", "perf_event_open"):
            assert name not in rules, (kind, name)
    assert {c[0][3] for c in seccomp.rules("vmm")["ioctl"]} >= set(kvm.TABLE.values())


def test_filters_compile_and_names_resolve():
    for k in seccomp.KINDS:
        bpf = seccomp.compile_bpf(k)
        assert len(bpf) % 8 == 0 and len(bpf) > 8
    assert seccomp.syscall_name(41) == "socket" and seccomp.syscall_name(59) == "execve"
    assert seccomp.syscall_name(100000) == "syscall 100000"
