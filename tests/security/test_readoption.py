"""Jailed VMMs re-adopted by a restarted node service stay confined and supervised:
pause, resume and stop work through the new node, and the jail (directory, cgroup, uid
lock) is removed when the VM ends — stopped by request or killed."""

from __future__ import annotations

import os
import signal

import pytest

from nodesvc.api.v1 import nodesvc_pb2 as pb
from nodesvc.core.launcher import JailConfig
from nodesvc_jailer import cgroup as cg
from tests.service.conftest import read_console_until, vm_spec, wait_state

pytestmark = [pytest.mark.jail, pytest.mark.kvm]
ST = pb.VmState


def _jail_left(state_dir: str, vm_id: str) -> list[str]:
    jails = os.path.join(state_dir, "jail")
    parent = JailConfig(jails).parent_cgroup
    left = [p for p in (os.path.join(jails, vm_id),) if os.path.exists(p)]
    left += [p for t, d, _ in cg.read_mounts() if t == "cgroup"
             for p in (os.path.join(d, parent, vm_id),) if os.path.exists(p)]
    uids = os.path.join(jails, ".uids")
    for name in os.listdir(uids):
        with open(os.path.join(uids, name)) as f:
            if f.read().strip() == vm_id:
                left.append(os.path.join(uids, name))
    return left


def _start(s, guest, vm_id: str) -> pb.Vm:
    vm = s.stub.CreateVm(pb.CreateVmRequest(vm_id=vm_id, spec=vm_spec(guest("echo"),
                         boot_args="idle=120000"), start=True), timeout=60).vm
    assert vm.state == ST.VM_STATE_RUNNING, vm.reason
    return vm


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
def test_readopted_jailed_vms_pause_stop_and_are_cleaned(make_server, guest, probe, hard):
    s = make_server()
    stopped, killed = _start(s, guest, "re-stop"), _start(s, guest, "re-kill")
    assert _jail_left(s.state_dir, "re-stop") != []
    s.stop(signal.SIGKILL if hard else signal.SIGTERM)

    s2 = make_server()
    for vm in (stopped, killed):
        again = s2.stub.GetVm(pb.GetVmRequest(vm_id=vm.id)).vm
        assert again.state == ST.VM_STATE_RUNNING and again.vmm_pid == vm.vmm_pid
        st = probe.status(vm.vmm_pid)     # still the same confined process
        assert st["Seccomp"] == "2" and int(st["CapEff"], 16) == 0 and st["Uid"].split()[0] != "0"

    # pause / resume / console through the new node
    s2.stub.PauseVm(pb.PauseVmRequest(vm_id="re-stop"))
    assert s2.stub.GetVm(pb.GetVmRequest(vm_id="re-stop")).vm.state == ST.VM_STATE_PAUSED
    s2.stub.ResumeVm(pb.ResumeVmRequest(vm_id="re-stop"))
    console = s2.stub.StreamConsole(pb.StreamConsoleRequest(vm_id="re-stop"), timeout=15)
    attach = s2.stub.AttachConsole(iter([pb.ConsoleInput(vm_id="re-stop", data=b"hi")]),
                                   timeout=15)
    read_console_until(console, b"hi")
    attach.cancel()

    # stopped by request: STOPPED, and its jail is gone
    vm = s2.stub.StopVm(pb.StopVmRequest(vm_id="re-stop", force=True), timeout=20).vm
    assert vm.state == ST.VM_STATE_STOPPED
    assert _jail_left(s2.state_dir, "re-stop") == []

    # killed while re-adopted (not the new node's child): FAILED, and its jail is gone
    os.kill(killed.vmm_pid, signal.SIGKILL)
    vm = wait_state(s2.stub, "re-kill", ST.VM_STATE_FAILED, timeout=30)
    assert vm.vmm_pid == 0
    assert _jail_left(s2.state_dir, "re-kill") == []

    # and a re-adopted node still starts new jailed VMs
    fresh = _start(s2, guest, "re-new")
    assert probe.status(fresh.vmm_pid)["Seccomp"] == "2"
