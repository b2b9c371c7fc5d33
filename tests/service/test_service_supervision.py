"""Supervision: crashes are noticed at once and cleaned up; VMs outlive node service restarts."""

import base64
import json
import os
import signal
import socket
import time

import pytest

from nodesvc.api.v1 import nodesvc_pb2 as pb
from tests.service.conftest import read_console_until, vm_spec, wait_state, jail_run_dir

pytestmark = pytest.mark.kvm
ST = pb.VmState


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:    # a zombie is not alive
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _start_echo(stub, guest, vm_id: str) -> pb.Vm:
    vm = stub.CreateVm(pb.CreateVmRequest(vm_id=vm_id, spec=vm_spec(guest("echo")), start=True),
                       timeout=30).vm
    assert vm.state == ST.VM_STATE_RUNNING, vm.reason
    return vm


def test_killed_vmm_is_failed_and_cleaned_up(make_server, guest):
    s = make_server()
    vm = _start_echo(s.stub, guest, "victim")
    run_dir = jail_run_dir(s.state_dir, "victim")
    assert os.path.isdir(run_dir)
    os.kill(vm.vmm_pid, signal.SIGKILL)
    # how soon it is FAILED is a figure of bench/lifecycle.py
    vm = wait_state(s.stub, "victim", ST.VM_STATE_FAILED, timeout=30)
    assert vm.reason == "VMM process killed by signal SIGKILL" and vm.vmm_pid == 0
    assert not os.path.exists(run_dir)
    # A failed VM can be started again.
    assert s.stub.StartVm(pb.StartVmRequest(vm_id="victim"), timeout=30).vm.state == \
        ST.VM_STATE_RUNNING


def test_restarted_node_service_re_adopts_running_vms(make_server, guest):
    s = make_server()
    vm = _start_echo(s.stub, guest, "survivor")
    console = s.stub.StreamConsole(pb.StreamConsoleRequest(vm_id="survivor",
                                                           include_history=True), timeout=15)
    read_console_until(console, b"READY")
    assert s.stop() == 0        # SIGTERM: graceful, VMs keep running
    assert _alive(vm.vmm_pid)

    s2 = make_server()
    again = s2.stub.GetVm(pb.GetVmRequest(vm_id="survivor")).vm
    assert again.state == ST.VM_STATE_RUNNING and again.vmm_pid == vm.vmm_pid
    console = s2.stub.StreamConsole(pb.StreamConsoleRequest(vm_id="survivor"), timeout=15)
    attach = s2.stub.AttachConsole(iter([pb.ConsoleInput(vm_id="survivor", data=b"xyz")]),
                                   timeout=15)
    assert b"xyz" in read_console_until(console, b"xyz")
    attach.cancel()
    # Still supervised: stopping works and leaves nothing behind.
    vm = s2.stub.StopVm(pb.StopVmRequest(vm_id="survivor", force=True), timeout=10).vm
    assert vm.state == ST.VM_STATE_STOPPED and not _alive(again.vmm_pid)


def test_node_service_killed_hard_still_re_adopts(make_server, guest):
    s = make_server()
    vm = _start_echo(s.stub, guest, "hard")
    s.stop(signal.SIGKILL)
    s2 = make_server()
    assert s2.stub.GetVm(pb.GetVmRequest(vm_id="hard")).vm.vmm_pid == vm.vmm_pid
    s2.stub.PauseVm(pb.PauseVmRequest(vm_id="hard"))
    s2.stub.StopVm(pb.StopVmRequest(vm_id="hard"), timeout=10)


def _control(run_dir, op, **args):
    with socket.socket(socket.AF_UNIX) as sk:
        sk.settimeout(5)
        sk.connect(os.path.join(run_dir, "control.sock"))
        f = sk.makefile("rwb")
        f.readline()
        f.write(json.dumps({"id": 1, "op": op, "args": args}).encode() + b"\n")
        f.flush()
        return json.loads(f.readline())


def test_vms_that_ended_while_the_node_was_down(make_server, guest):
    s = make_server()
    killed = _start_echo(s.stub, guest, "killed")
    quit_ = _start_echo(s.stub, guest, "quitter")
    s.stop()
    os.kill(killed.vmm_pid, signal.SIGKILL)
    # The echo guest resets itself on 'q': the VMM records why in exit.json and exits.
    run_dir = jail_run_dir(s.state_dir, "quitter")
    assert _control(run_dir, "console_input", data=base64.b64encode(b"q").decode())["ok"]
    deadline = time.monotonic() + 10
    while _alive(quit_.vmm_pid) and time.monotonic() < deadline:
        time.sleep(0.02)

    s2 = make_server()
    k = s2.stub.GetVm(pb.GetVmRequest(vm_id="killed")).vm
    assert k.state == ST.VM_STATE_FAILED
    assert k.reason == "VMM process vanished while the node service was down"
    q = s2.stub.GetVm(pb.GetVmRequest(vm_id="quitter")).vm
    assert q.state == ST.VM_STATE_STOPPED
    assert q.reason.startswith("guest-reset") and "while the node service was down" in q.reason
    jails = os.path.join(s.state_dir, "jail")      # every jail of a dead VMM is removed
    assert [d for d in os.listdir(jails) if not d.startswith(".")] == []
    ids = [v.id for v in s2.stub.ListVms(pb.ListVmsRequest()).vms]
    assert ids == ["killed", "quitter"]      # nothing lost, nothing duplicated
