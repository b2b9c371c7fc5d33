"""Jailed VMMs SIGKILLed over and over (start, kill, FAILED, again) leave nothing behind:
no jail directory, no cgroup, no uid lock or process of a VM's uid, no TAP still
attached, and no descriptor in the node service or the zygote.

CYCLES: 100 by default (about 40 s here, 2 shared cores); NODESVC_CRASH_CYCLES overrides.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from nodesvc.api.v1 import nodesvc_pb2 as pb
from nodesvc.core.launcher import JailConfig
from nodesvc.net.tap import open_tap
from nodesvc_jailer import cgroup as cg
from tests.service.conftest import vm_spec, wait_state

pytestmark = [pytest.mark.jail, pytest.mark.kvm]
ST = pb.VmState
CYCLES = int(os.environ.get("NODESVC_CRASH_CYCLES", "100"))
WARM_UP = 3     # the node's first cycles open what it keeps (channels, executor threads)


@pytest.fixture
def tap():
    name = f"nsec{os.getpid() % 100000}"
    r = subprocess.run(["ip", "tuntap", "add", "dev", name, "mode", "tap"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot create a TAP ({r.stderr.strip()})")
    yield name
    subprocess.run(["ip", "link", "del", name], capture_output=True)


def _fds(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return sorted(out)


def _zygote_pid(state_dir: str) -> int:
    marker = os.fsencode(os.path.join(state_dir, "zygote.sock"))
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"nodesvc.vmm.zygote" in cmd and marker in cmd:
            return int(d)
    raise AssertionError("no zygote running")


def _processes_of(vm_cgroup: str, uids: set[int]) -> list[int]:
    """Processes still in the VM's cgroup, or running as one of its uids inside it.
    (Other node services on this host may hand out the same uids: each has its own
    allocator, so a uid alone is not evidence.)"""
    out = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/cgroup") as f:
                groups = f.read()
            uid = os.stat(f"/proc/{d}").st_uid
        except OSError:
            continue
        if "/" + vm_cgroup + "\n" in groups or (uid in uids and vm_cgroup in groups):
            out.append(int(d))
    return out


def _cycle(s, vm_id: str, uids: set[int]) -> None:
    vm = s.stub.StartVm(pb.StartVmRequest(vm_id=vm_id), timeout=60).vm
    assert vm.state == ST.VM_STATE_RUNNING, vm.reason
    uids.add(os.stat(f"/proc/{vm.vmm_pid}").st_uid)
    os.kill(vm.vmm_pid, signal.SIGKILL)
    vm = wait_state(s.stub, vm_id, ST.VM_STATE_FAILED, timeout=30)
    assert vm.reason == "VMM process killed by signal SIGKILL" and vm.vmm_pid == 0


def test_sigkilled_jailed_vmms_leave_nothing(jailed_node, guest, tap):
    s = jailed_node
    spec = vm_spec(guest("idle"))
    spec.network_interfaces.add(iface_id="eth0", host_dev_name=tap)
    s.stub.CreateVm(pb.CreateVmRequest(vm_id="crash", spec=spec))
    uids: set[int] = set()
    for _ in range(WARM_UP):
        _cycle(s, "crash", uids)
    zygote = _zygote_pid(s.state_dir)
    node_fds, zygote_fds = _fds(s.proc.pid), _fds(zygote)
    for _ in range(CYCLES):
        _cycle(s, "crash", uids)

    assert _fds(s.proc.pid) == node_fds
    assert _zygote_pid(s.state_dir) == zygote and _fds(zygote) == zygote_fds
    jails = os.path.join(s.state_dir, "jail")
    assert [d for d in os.listdir(jails) if not d.startswith(".")] == []
    assert os.listdir(os.path.join(jails, ".uids")) == []
    parent = JailConfig(jails).parent_cgroup     # this node's cgroup parent
    assert _processes_of(f"{parent}/crash", uids) == []
    for t, d, _ in cg.read_mounts():
        if t == "cgroup":
            assert not os.path.exists(os.path.join(d, parent, "crash")), d
    with open_tap(tap):     # nothing holds the TAP any more (TUNSETIFF would be EBUSY)
        pass
    s.stub.DeleteVm(pb.DeleteVmRequest(vm_id="crash"))
