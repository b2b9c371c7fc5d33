"""Exec mode (`nodesvc serve --jail-mode exec`): every VMM a fresh interpreter exec'd by
`nodesvc-jailer`, with the runtime bound read-only into its jail. Checked on a real node
service, from the host: a tiny guest's whole lifecycle, the same confinement as a zygote's
child (uid, capabilities, NoNewPrivs, seccomp on every thread, namespaces, cgroup limits)
with a root that adds only read-only mounts, a layout of its own per VM (the reason for the
mode), forbidden acts killed and named, devices planned from handed descriptors, and
nothing left after SIGKILL of the VMM or of the jailer's relay process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time

import pytest

from nodesvc.api.v1 import nodesvc_pb2 as pb
from nodesvc.core.launcher import JailConfig
from nodesvc_jailer import UidAllocator
from nodesvc_jailer import cgroup as cg
from tests.security.conftest import NS_KINDS, Witnesses, _missing, remove_jails
from tests.security.test_hostile_device import Console, _alive, _type
from tests.service.conftest import NodeServer, read_console_until, vm_spec, wait_state

pytestmark = [pytest.mark.jail, pytest.mark.kvm]
ST = pb.VmState
SECCOMP = "VMM killed by seccomp: forbidden syscall "
# What exec mode adds to the zygote's root (dev/ and run/): read-only, for the interpreter
SYSTEM_BINDS = {"/lib", "/lib64", "/etc/ld.so.cache", "/sbin/ldconfig", "/dev/null"}


def _pids_with(marker: bytes) -> list[int]:
    out = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if marker in f.read():
                    out.append(int(d))
        except OSError:
            pass
    return out


def relays(state_dir: str) -> list[int]:
    """The jailer processes (one per live VM: the VMM's parent) of this node."""
    return _pids_with(b"\0--chroot-base-dir\0" + os.fsencode(os.path.join(state_dir, "jail"))
                      + b"\0")


@pytest.fixture(scope="module")
def exec_node():
    """An exec-mode node with the TEST-ONLY hostile device enabled, and its witnesses."""
    why = _missing()
    if why:
        pytest.skip(why)
    base = tempfile.mkdtemp(prefix="nsec-w-", dir="/tmp")
    d = tempfile.mkdtemp(prefix="nsec-", dir="/tmp")
    w = Witnesses(base, os.path.join(d, "s.sock"))
    env = {"NODESVC_TEST_PLUGINS": "1", "NODESVC_HOSTILE_TARGETS": json.dumps(w.targets())}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        s = NodeServer(d, "--jail-mode", "exec").start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    s.witnesses = w
    yield s
    s.stop()
    for pid in relays(d):       # a relay's death takes its VMM (PDEATHSIG)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    remove_jails(d)
    shutil.rmtree(d, ignore_errors=True)
    w.close()
    shutil.rmtree(base, ignore_errors=True)


def _start(s, guest, vm_id: str, name: str = "idle", vcpus: int = 1,
           boot_args: str = "idle=120000", drives=(), vsock=None) -> pb.Vm:
    spec = vm_spec(guest(name), vcpus=vcpus, boot_args=boot_args)
    spec.drives.extend(drives)
    if vsock is not None:
        spec.vsock.CopyFrom(vsock)
    vm = s.stub.CreateVm(pb.CreateVmRequest(vm_id=vm_id, spec=spec, start=True),
                         timeout=90).vm
    assert vm.state == ST.VM_STATE_RUNNING, vm.reason
    return vm


def _remove(s, vm_id: str) -> None:
    s.stub.StopVm(pb.StopVmRequest(vm_id=vm_id, force=True), timeout=30)
    s.stub.DeleteVm(pb.DeleteVmRequest(vm_id=vm_id))


def _status(pid) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (ln.partition(":") for ln in f)}


def _gone(s, vm_id: str, relay: int | None = None) -> None:
    """Nothing of the VM's jail is left: directory, uid lock, cgroup, relay process."""
    jails = os.path.join(s.state_dir, "jail")
    assert not os.path.exists(os.path.join(jails, vm_id))
    assert UidAllocator(os.path.join(jails, ".uids")).uid_of(vm_id) is None
    parent = JailConfig(jails).parent_cgroup
    for t, d, _ in cg.read_mounts():
        if t == "cgroup":
            assert not os.path.exists(os.path.join(d, parent, vm_id)), d
    if relay is not None:   # ended (a zombie until its parent, or init, reaps it)
        assert not _alive(relay)


def _relay_of(s, vm_pid: int) -> int:
    ppid = int(_status(vm_pid)["PPid"])
    assert ppid in relays(s.state_dir)
    return ppid


def test_lifecycle_create_start_console_stop(exec_node, guest):
    s = exec_node
    vm = _start(s, guest, "life", name="echo", boot_args="idle=60000")
    relay = _relay_of(s, vm.vmm_pid)
    con = Console(s.stub, "life")
    con.wait_for(b"READY\n")
    _type(s.stub, "life", b"hi")
    con.wait_for(b"READY\nhi")
    con.close()
    vm = s.stub.StopVm(pb.StopVmRequest(vm_id="life", force=True), timeout=30).vm
    assert vm.state == ST.VM_STATE_STOPPED and vm.vmm_pid == 0, vm.reason
    _gone(s, "life", relay)
    s.stub.DeleteVm(pb.DeleteVmRequest(vm_id="life"))


@pytest.fixture(scope="module")
def two_vms(exec_node, guest):
    out = {}
    for vm_id, vcpus in (("xconf-1", 1), ("xconf-2", 2)):
        vm = _start(exec_node, guest, vm_id, vcpus=vcpus)
        stream = exec_node.stub.StreamConsole(pb.StreamConsoleRequest(
            vm_id=vm_id, include_history=True), timeout=20)
        read_console_until(stream, b"IDLE")     # the guest ran: every filter is in place
        stream.cancel()
        out[vm_id] = (vm, vcpus)
    yield out
    for vm_id in out:
        _remove(exec_node, vm_id)


def test_same_confinement_as_zygote_mode(exec_node, two_vms, probe):
    host, uids, seen = probe.namespaces("self"), set(), []
    for vm_id, (vm, vcpus) in two_vms.items():
        st = probe.status(vm.vmm_pid)
        uid, gid = st["Uid"].split(), st["Gid"].split()
        assert len(set(uid)) == 1 and uid[0] != "0" and len(set(gid)) == 1 and gid[0] != "0"
        assert st["Groups"] == ""
        uids.add(uid[0])
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(st[cap], 16) == 0, (cap, st[cap])
        assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
        assert st["NSpid"].split() == [str(vm.vmm_pid), "1"]
        threads = probe.threads(vm.vmm_pid)
        assert len(threads) >= vcpus + 2
        for tid, ts in threads.items():     # the baseline and the thread kind's own filter
            assert ts["Seccomp"] == "2" and int(ts["Seccomp_filters"]) >= 2, (tid, ts)
        ns = probe.namespaces(vm.vmm_pid)
        assert all(ns[k] != host[k] for k in NS_KINDS), ns
        seen.append(ns)
        # the relay: same uid, no capabilities, in the jail's mount ns, not in its pid ns
        rst = probe.status(_relay_of(exec_node, vm.vmm_pid))
        assert rst["Uid"].split()[0] == uid[0] and int(rst["CapEff"], 16) == 0
        assert rst["NoNewPrivs"] == "1"
        assert probe.namespaces(_relay_of(exec_node, vm.vmm_pid))["mnt"] == ns["mnt"]
    assert len(uids) == len(two_vms)
    assert all(seen[0][k] != seen[1][k] for k in NS_KINDS), "two VMs share a namespace"


def test_cgroup_limits_hold_the_vmm_and_its_relay(exec_node, two_vms, probe):
    if cg.detect_version() != 1:
        pytest.skip("host runs cgroup v2 (v2 is covered on a fake hierarchy in tests/jailer)")
    mounts = {opt: d for t, d, opts in cg.read_mounts() if t == "cgroup" for opt in opts}
    for vm_id, (vm, vcpus) in two_vms.items():
        groups = probe.cgroups(vm.vmm_pid)
        d = {c: mounts[c] + groups[c] for c in ("memory", "cpu", "pids")}
        assert all(groups[c].endswith("/" + vm_id) for c in d), groups

        def read(ctrl, name):
            with open(os.path.join(d[ctrl], name)) as f:
                return f.read().strip()
        assert int(read("memory", "memory.limit_in_bytes")) == (32 + 256) << 20
        assert int(read("pids", "pids.max")) == vcpus + 12 + 1     # + the relay
        assert int(read("cpu", "cpu.cfs_quota_us")) == int((vcpus + 0.5) * 100_000)
        relay = _relay_of(exec_node, vm.vmm_pid)
        assert sorted(map(int, read("pids", "cgroup.procs").split())) == sorted(
            [vm.vmm_pid, relay])


def test_root_adds_only_read_only_runtime(exec_node, two_vms, probe):
    for vm_id, (vm, _) in two_vms.items():
        with open(f"/proc/{vm.vmm_pid}/mountinfo") as f:
            mounts = {ln.split()[4]: ln.split()[5].split(",") for ln in f}
        root_opts = mounts.pop("/")     # the jail's own dir, as in zygote mode
        assert {"rw", "nosuid", "noexec"} <= set(root_opts), root_opts
        assert SYSTEM_BINDS <= set(mounts)
        for point, opts in mounts.items():
            assert "ro" in opts and "nosuid" in opts, (point, opts)
        assert any(p.endswith("/nodesvc") for p in mounts)
        root = f"/proc/{vm.vmm_pid}/root"
        assert {"dev/kvm", "dev/net/tun", "dev/urandom", "run/control.sock"} <= set(
            probe.root_tree(vm.vmm_pid))
        binds = [m.lstrip("/") for m in mounts]
        for host_path in ("etc/passwd", "etc/shadow", "proc", "sys", "tmp", "usr/bin",
                          "var", exec_node.socket[1:], exec_node.state_dir[1:]):
            full = os.path.join(root, host_path)
            on_the_way = {m[len(host_path) + 1:].split("/")[0] for m in binds
                          if m.startswith(host_path + "/")}
            if on_the_way:  # e.g. a checkout under /tmp: only the way to its bind is there
                assert set(os.listdir(full)) <= on_the_way, (host_path, os.listdir(full))
            else:
                assert not os.path.lexists(full), host_path


def test_open_files_are_the_vms_own(exec_node, two_vms, guest):
    for vm_id, (vm, _) in two_vms.items():
        jail = os.path.join(exec_node.state_dir, "jail", vm_id)
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


def _libpython_base(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as f:
        for ln in f:
            if "libpython" in ln:
                return int(ln.split("-", 1)[0], 16)
    raise AssertionError(f"no libpython mapped in {pid}")


def test_each_vmm_has_its_own_address_space_layout(exec_node, two_vms):
    """The point of exec mode: a zygote's children all share the zygote's layout (where
    libpython, the heap and the stack are); exec'd VMMs get one each."""
    (a, _), (b, _) = two_vms.values()
    assert _libpython_base(a.vmm_pid) != _libpython_base(b.vmm_pid)


def test_zygote_children_share_one_layout(jailed_node, guest):
    """The other side of the trade-off, on a zygote-mode node."""
    vms = [_start(jailed_node, guest, f"aslr-{i}") for i in range(2)]
    try:
        assert _libpython_base(vms[0].vmm_pid) == _libpython_base(vms[1].vmm_pid)
    finally:
        for vm in vms:
            _remove(jailed_node, vm.id)


def test_devices_are_planned_from_handed_descriptors(exec_node, guest):
    """A drive and a vsock: their host-path checks run jailed, on what the node handed in
    (the drive's descriptor; the socket's place in /run, linked from the spec's path)."""
    s = exec_node
    disk = os.path.join(s.state_dir, "disk.img")
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    uds = os.path.join(s.state_dir, "v.sock")
    vm = _start(s, guest, "devs", drives=[pb.Drive(drive_id="rootfs", path_on_host=disk)],
                vsock=pb.Vsock(guest_cid=3, uds_path=uds))
    fds = {os.readlink(f"/proc/{vm.vmm_pid}/fd/{n}")
           for n in os.listdir(f"/proc/{vm.vmm_pid}/fd")}
    assert disk in fds
    assert os.readlink(uds) == os.path.join(s.state_dir, "jail", "devs", "root", "run",
                                            "vsock.sock")
    assert os.path.exists(uds)      # the VMM listens in its /run
    _remove(s, "devs")
    _gone(s, "devs")


@pytest.mark.parametrize("cmd,reason", [("e", SECCOMP + "execve"), ("o", SECCOMP + "openat")])
def test_forbidden_act_kills_the_vmm_and_is_named(exec_node, guest, cmd, reason):
    """The runtime is in this jail: running a binary from it or opening one of its files
    is still forbidden once the filters are loaded."""
    s = exec_node
    vm_id = f"xact-{ord(cmd):x}"
    vm = _start(s, guest, vm_id, name="poke")
    relay = _relay_of(s, vm.vmm_pid)
    con = Console(s.stub, vm_id)
    con.wait_for(b"POKE READY")
    _type(s.stub, vm_id, cmd.encode(), fatal=True)
    failed = wait_state(s.stub, vm_id, ST.VM_STATE_FAILED, timeout=20)
    con.close()
    assert failed.reason == reason
    assert s.witnesses.untouched() == []
    _gone(s, vm_id, relay)
    s.stub.DeleteVm(pb.DeleteVmRequest(vm_id=vm_id))


def test_denied_act_leaves_the_vm_running(exec_node, guest):
    s = exec_node
    vm = _start(s, guest, "xdenied", name="poke")
    con = Console(s.stub, "xdenied")
    con.wait_for(b"POKE READY")
    _type(s.stub, "xdenied", b"u")      # the node's gRPC socket: no such path in the jail
    out = con.wait_for(b"HOSTILE u DENIED ENOENT\n")
    con.close()
    assert b"ALLOWED" not in out
    assert s.stub.GetVm(pb.GetVmRequest(vm_id="xdenied")).vm.vmm_pid == vm.vmm_pid
    _remove(s, "xdenied")


def _fds(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return sorted(out)


def test_sigkill_of_the_vmm_or_its_relay_leaves_nothing(exec_node, guest):
    s = exec_node
    s.stub.CreateVm(pb.CreateVmRequest(vm_id="xcrash", spec=vm_spec(guest("idle"))))

    def cycle(kill_relay: bool) -> None:
        vm = s.stub.StartVm(pb.StartVmRequest(vm_id="xcrash"), timeout=90).vm
        assert vm.state == ST.VM_STATE_RUNNING, vm.reason
        relay = _relay_of(s, vm.vmm_pid)
        os.kill(relay if kill_relay else vm.vmm_pid, signal.SIGKILL)
        vm = wait_state(s.stub, "xcrash", ST.VM_STATE_FAILED, timeout=30)
        assert vm.reason == "VMM process killed by signal SIGKILL" and vm.vmm_pid == 0
        _gone(s, "xcrash", relay)
    cycle(False)                        # the node's first cycle opens what it keeps
    node_fds = _fds(s.proc.pid)
    for i in range(6):
        cycle(kill_relay=bool(i % 2))
    deadline = time.monotonic() + 5
    while _fds(s.proc.pid) != node_fds and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _fds(s.proc.pid) == node_fds
    assert _pids_with(b"\0--id\0xcrash\0") == []     # no relay, no VMM of it
    s.stub.DeleteVm(pb.DeleteVmRequest(vm_id="xcrash"))


def test_readopted_after_a_node_restart_and_cleaned(make_server, guest, probe):
    """The relays were the dead node's children: the new node watches the VMMs by pid,
    drives them, and removes their jails when they end (stopped, or killed)."""
    s = make_server("--jail-mode", "exec")
    stopped, killed = _start(s, guest, "xre-stop"), _start(s, guest, "xre-kill")
    s.stop(signal.SIGKILL)
    s2 = make_server("--jail-mode", "exec")
    for vm in (stopped, killed):
        again = s2.stub.GetVm(pb.GetVmRequest(vm_id=vm.id)).vm
        assert again.state == ST.VM_STATE_RUNNING and again.vmm_pid == vm.vmm_pid
        assert probe.status(vm.vmm_pid)["Seccomp"] == "2"
    s2.stub.PauseVm(pb.PauseVmRequest(vm_id="xre-stop"))
    s2.stub.ResumeVm(pb.ResumeVmRequest(vm_id="xre-stop"))
    vm = s2.stub.StopVm(pb.StopVmRequest(vm_id="xre-stop", force=True), timeout=30).vm
    assert vm.state == ST.VM_STATE_STOPPED
    _gone(s2, "xre-stop")
    relay = _relay_of(s2, killed.vmm_pid)
    os.kill(killed.vmm_pid, signal.SIGKILL)
    vm = wait_state(s2.stub, "xre-kill", ST.VM_STATE_FAILED, timeout=30)
    assert vm.vmm_pid == 0
    _gone(s2, "xre-kill", relay)
