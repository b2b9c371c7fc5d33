"""Real VMM processes running tiny guests, driven through the gRPC API end to end."""

import base64
import json
import os
import socket
import threading
import time

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from nodesvc.api.v1 import nodesvc_pb2 as pb
from tests.service.conftest import read_console_until, vm_spec, wait_state, jail_run_dir

pytestmark = pytest.mark.kvm
ST = pb.VmState


@pytest.fixture(scope="module")
def stub(shared_server):
    return shared_server.stub


def states(events):
    return [ST.Name(e.vm.state)[len("VM_STATE_"):] if e.type != pb.VmEvent.TYPE_DELETED
            else "DELETED"
            for e in events]


def test_create_start_console_stop_delete(stub, shared_server, guest):
    rev0 = stub.ListVms(pb.ListVmsRequest()).revision
    stub.CreateVm(pb.CreateVmRequest(vm_id="e2e", spec=vm_spec(guest("echo")),
                                     labels={"suite": "service"}))
    vm = stub.StartVm(pb.StartVmRequest(vm_id="e2e"), timeout=30).vm
    assert vm.state == ST.VM_STATE_RUNNING and vm.vmm_pid > 0 and vm.start_count == 1
    run_dir = jail_run_dir(shared_server.state_dir, "e2e")
    assert os.path.exists(os.path.join(run_dir, "control.sock"))

    # A late subscriber still sees the boot, from the ring buffer.
    console = stub.StreamConsole(pb.StreamConsoleRequest(vm_id="e2e", include_history=True),
                                 timeout=15)
    assert b"READY" in read_console_until(console, b"READY")

    # Keystrokes in through AttachConsole, echoed out to both streams.
    attach = stub.AttachConsole(iter([pb.ConsoleInput(vm_id="e2e", data=b"abc")]), timeout=15)
    assert b"abc" in read_console_until(attach, b"abc")
    assert b"abc" in read_console_until(console, b"abc")
    attach.cancel()

    # The echo guest ignores Ctrl-Alt-Del: the stop is forced after the grace period.
    vm = stub.StopVm(pb.StopVmRequest(vm_id="e2e", grace_period=Duration(nanos=300_000_000)),
                     timeout=15).vm
    assert vm.state == ST.VM_STATE_STOPPED and vm.vmm_pid == 0, vm.reason
    assert "by force after a 0.3s grace period" in vm.reason    # its wall time: bench/lifecycle.py
    assert not os.path.exists(run_dir)
    list(console)       # the stream ends with the VMM (else DEADLINE_EXCEEDED)
    stub.DeleteVm(pb.DeleteVmRequest(vm_id="e2e"))

    # Every transition, in order, replayed from the revision before the create.
    events = stub.WatchVms(pb.WatchVmsRequest(since_revision=rev0, vm_id="e2e"), timeout=5)
    got = [next(events) for _ in range(6)]
    events.cancel()
    assert states(got) == ["CREATED", "STARTING", "RUNNING", "STOPPING", "STOPPED", "DELETED"]
    assert [e.revision for e in got] == sorted(e.revision for e in got)
    assert got[0].type == pb.VmEvent.TYPE_CREATED and got[0].vm.labels == {"suite": "service"}
    assert got[3].previous_state == ST.VM_STATE_RUNNING


def test_guest_reset_ends_the_vm_and_it_can_start_again(stub, guest):
    vm = stub.CreateVm(pb.CreateVmRequest(vm_id="hello", spec=vm_spec(guest("hello")),
                                          start=True), timeout=30).vm
    assert vm.state in (ST.VM_STATE_RUNNING, ST.VM_STATE_STOPPED)
    vm = wait_state(stub, "hello", ST.VM_STATE_STOPPED)
    assert vm.reason.startswith("guest-reset"), vm.reason
    out = b"".join(m.data for m in stub.StreamConsole(
        pb.StreamConsoleRequest(vm_id="hello", include_history=True), timeout=5))
    assert out == b"HELLO FROM TINY GUEST\n"
    stub.StartVm(pb.StartVmRequest(vm_id="hello"), timeout=30)
    vm = wait_state(stub, "hello", ST.VM_STATE_STOPPED)
    assert vm.start_count == 2
    stub.DeleteVm(pb.DeleteVmRequest(vm_id="hello"))


def test_guest_failure_is_failed_with_the_exit_reason(stub, guest):
    stub.CreateVm(pb.CreateVmRequest(vm_id="crasher", spec=vm_spec(guest("badinsn")),
                                     start=True), timeout=30)
    vm = wait_state(stub, "crasher", ST.VM_STATE_FAILED)
    assert vm.reason.startswith("emulation-failure"), vm.reason
    stub.DeleteVm(pb.DeleteVmRequest(vm_id="crasher"))


def test_pause_resume_and_forced_stop(stub, guest):
    stub.CreateVm(pb.CreateVmRequest(vm_id="pauser", spec=vm_spec(guest("echo")), start=True),
                  timeout=30)
    console = stub.StreamConsole(pb.StreamConsoleRequest(vm_id="pauser", include_history=True),
                                 timeout=15)
    read_console_until(console, b"READY")
    assert stub.PauseVm(pb.PauseVmRequest(vm_id="pauser")).vm.state == ST.VM_STATE_PAUSED
    with pytest.raises(grpc.RpcError) as ei:
        stub.PauseVm(pb.PauseVmRequest(vm_id="pauser"))
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as ei:
        stub.DeleteVm(pb.DeleteVmRequest(vm_id="pauser"))
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # Input while paused waits in the UART; the guest echoes it once resumed.
    attach = stub.AttachConsole(iter([pb.ConsoleInput(vm_id="pauser", data=b"z")]), timeout=15)
    time.sleep(0.2)
    assert stub.ResumeVm(pb.ResumeVmRequest(vm_id="pauser")).vm.state == ST.VM_STATE_RUNNING
    assert b"z" in read_console_until(attach, b"z")
    attach.cancel()
    vm = stub.StopVm(pb.StopVmRequest(vm_id="pauser", force=True), timeout=10).vm
    assert vm.state == ST.VM_STATE_STOPPED and vm.reason == "stopped by force"
    stub.DeleteVm(pb.DeleteVmRequest(vm_id="pauser"))


def test_watch_resumes_without_gaps(stub, guest):
    rev0 = stub.ListVms(pb.ListVmsRequest()).revision
    seen, first_part = [], threading.Event()
    watch = stub.WatchVms(pb.WatchVmsRequest(since_revision=rev0, vm_id="watched"))

    def follow():
        for ev in watch:
            seen.append(ev)
            if len(seen) == 2:
                first_part.set()
                return
    t = threading.Thread(target=follow)
    t.start()
    stub.CreateVm(pb.CreateVmRequest(vm_id="watched", spec=vm_spec(guest("hello"))))
    stub.StartVm(pb.StartVmRequest(vm_id="watched"), timeout=30)
    assert first_part.wait(10)
    watch.cancel()
    t.join()
    wait_state(stub, "watched", ST.VM_STATE_STOPPED)
    stub.DeleteVm(pb.DeleteVmRequest(vm_id="watched"))
    # Reconnect from the last revision seen: the rest follows, nothing twice, nothing lost.
    rest = stub.WatchVms(pb.WatchVmsRequest(since_revision=seen[-1].revision,
                                            vm_id="watched"), timeout=5)
    tail = [next(rest) for _ in range(3)]
    rest.cancel()
    assert states(seen + tail) == ["CREATED", "STARTING", "RUNNING", "STOPPED", "DELETED"]


def test_logs_and_metrics_stream_as_typed_records(stub, guest):
    stub.CreateVm(pb.CreateVmRequest(vm_id="logger", spec=vm_spec(guest("echo")), start=True),
                  timeout=30)
    logs = stub.StreamLogs(pb.StreamLogsRequest(vm_id="logger", include_history=True),
                           timeout=15)
    got_log = got_metrics = None
    for entry in logs:
        if entry.HasField("log") and "VM started" in entry.log.message:
            got_log = entry.log
        if entry.HasField("metrics") and entry.metrics.console_bytes >= len(b"READY\n"):
            got_metrics = entry.metrics
        if got_log and got_metrics:
            break
    logs.cancel()
    assert got_log.level == "INFO" and got_log.fields["vm_id"] == "logger"
    assert got_metrics.exits["io"] > 0 and got_metrics.time_in_kvm_seconds > 0
    assert json.loads(got_metrics.json)["console_dropped_bytes"] == 0
    only_metrics = stub.StreamLogs(pb.StreamLogsRequest(vm_id="logger", metrics=True,
                                                        include_history=True), timeout=15)
    assert next(only_metrics).HasField("metrics")
    only_metrics.cancel()
    stub.StopVm(pb.StopVmRequest(vm_id="logger", force=True), timeout=10)
    stub.DeleteVm(pb.DeleteVmRequest(vm_id="logger"))


def _control(run_dir: str, op: str, **args) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(os.path.join(run_dir, "control.sock"))
        f = s.makefile("rwb")
        assert json.loads(f.readline())["event"] == "hello"
        f.write(json.dumps({"id": 1, "op": op, "args": args}).encode() + b"\n")
        f.flush()
        return json.loads(f.readline())


def test_vmm_process_is_lean_and_in_its_own_session(stub, shared_server, guest):
    vm = stub.CreateVm(pb.CreateVmRequest(vm_id="lean", spec=vm_spec(guest("echo")),
                                          start=True), timeout=30).vm
    run_dir = jail_run_dir(shared_server.state_dir, "lean")
    status = _control(run_dir, "status")
    assert status["ok"] and status["result"]["state"] == "running"
    assert status["result"]["heavy_modules"] == []      # no grpc/protobuf/OTel exporter
    with open(f"/proc/{vm.vmm_pid}/maps") as f:
        assert "grpc" not in f.read()
    assert os.getsid(vm.vmm_pid) == vm.vmm_pid != os.getsid(shared_server.proc.pid)
    # A second control client (the node service is the first) works; console input too.
    r = _control(run_dir, "console_input", data=base64.b64encode(b"k").decode())
    assert r["ok"] and r["result"]["accepted"] == 1
    stub.StopVm(pb.StopVmRequest(vm_id="lean", force=True), timeout=10)
    stub.DeleteVm(pb.DeleteVmRequest(vm_id="lean"))


def test_live_drive_and_rate_limiter_updates(stub, guest, tmp_path):
    disks = [tmp_path / "a.img", tmp_path / "b.img"]
    for d in disks:
        d.write_bytes(bytes(1 << 20))
    spec = vm_spec(guest("echo"))
    spec.drives.add(drive_id="data", path_on_host=str(disks[0]))
    stub.CreateVm(pb.CreateVmRequest(vm_id="live-dev", spec=spec, start=True), timeout=30)
    vm = stub.UpdateDrive(pb.UpdateDriveRequest(vm_id="live-dev", drive_id="data",
                                                path_on_host=str(disks[1])), timeout=10).vm
    assert vm.spec.drives[0].path_on_host == str(disks[1]) and vm.state == ST.VM_STATE_RUNNING
    limiter = pb.RateLimiter(bandwidth=pb.TokenBucket(size=1 << 20, refill_time_ms=100))
    vm = stub.UpdateRateLimiter(pb.UpdateRateLimiterRequest(
        vm_id="live-dev", device_id="data", rate_limiter=limiter), timeout=10).vm
    assert vm.spec.drives[0].rate_limiter == limiter
    vm = stub.UpdateRateLimiter(pb.UpdateRateLimiterRequest(vm_id="live-dev",
                                                            device_id="data"), timeout=10).vm
    assert not vm.spec.drives[0].HasField("rate_limiter")
    with pytest.raises(grpc.RpcError) as ei:   # the VMM checks the new file itself
        stub.UpdateDrive(pb.UpdateDriveRequest(vm_id="live-dev", drive_id="data",
                                               path_on_host="/proc/self/status"), timeout=10)
    assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION, ei.value.details()
    assert "cannot use '/proc/self/status'" in ei.value.details()
    stub.StopVm(pb.StopVmRequest(vm_id="live-dev", force=True), timeout=10)
    stub.DeleteVm(pb.DeleteVmRequest(vm_id="live-dev"))


def test_stop_grace_period_is_capped_by_the_rpc_deadline(stub, guest):
    stub.CreateVm(pb.CreateVmRequest(vm_id="hurried", spec=vm_spec(guest("echo")), start=True),
                  timeout=30)
    # the reply arriving at all proves the cap: past its 3 s deadline the RPC would fail
    vm = stub.StopVm(pb.StopVmRequest(vm_id="hurried", grace_period=Duration(seconds=60)),
                     timeout=3).vm
    assert vm.state == ST.VM_STATE_STOPPED and "by force after a" in vm.reason, vm.reason
    stub.DeleteVm(pb.DeleteVmRequest(vm_id="hurried"))
