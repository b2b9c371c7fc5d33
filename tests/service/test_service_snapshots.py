"""Snapshots over gRPC through a real node service: CreateSnapshot / ListSnapshots /
GetSnapshot / DeleteSnapshot / RestoreVm, each VMM a real jailed process.

The `counter` tiny guest prints `CPU 0 <n>` for n = 0..COUNT-1 with its count in guest RAM;
the source VM's output up to the snapshot plus the restored VM's output must be one
uninterrupted count. Errors come back with their status codes and leave nothing behind.
"""

from __future__ import annotations

import os
import re

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase)

from nodesvc.api.v1 import nodesvc_pb2 as pb
from nodesvc.vmm.snapshot import format as F
from tests.service.conftest import read_console_until, vm_spec, wait_state

pytestmark = pytest.mark.kvm
COUNT = 60


@pytest.fixture(scope="module")
def stub(shared_server):
    if os.geteuid() != 0:
        pytest.skip("not root: the node runs its VMMs jailed (namespaces, cgroups)")
    return shared_server.stub


def counter_spec(guest) -> pb.VmSpec:
    """~60 ms a line (serial exits): ~3.5 s of counting, so a snapshot lands mid-count."""
    return vm_spec(guest("counter"), boot_args=f"count={COUNT} delay=20000")


def counts(text: str) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(r"^CPU 0 (\d+)$", text, re.M)]


def whole_console(stub, vm_id: str, timeout: float = 60.0) -> str:
    """Every byte of the VM's last run (its VMM must end for the stream to end)."""
    stream = stub.StreamConsole(pb.StreamConsoleRequest(vm_id=vm_id, include_history=True),
                                timeout=timeout)
    return b"".join(m.data for m in stream).decode()


def code_of(call, *args, **kw) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as ei:
        call(*args, timeout=60, **kw)
    return ei.value.code()


def test_snapshot_running_guest_and_restore_it_as_a_new_vm(stub, guest):
    stub.CreateVm(pb.CreateVmRequest(vm_id="snap-src", spec=counter_spec(guest), start=True),
                  timeout=60)
    read_console_until(stub.StreamConsole(pb.StreamConsoleRequest(
        vm_id="snap-src", include_history=True), timeout=30), b"CPU 0 12\n")

    # Firecracker's rule: a running VM is refused unless the call may pause it.
    assert code_of(stub.CreateSnapshot, pb.CreateSnapshotRequest(
        vm_id="snap-src", snapshot_id="s-grpc")) == grpc.StatusCode.FAILED_PRECONDITION
    assert stub.GetVm(pb.GetVmRequest(vm_id="snap-src")).vm.state == pb.VM_STATE_RUNNING

    r = stub.CreateSnapshot(pb.CreateSnapshotRequest(vm_id="snap-src", snapshot_id="s-grpc",
                                                     pause=True), timeout=120)
    s = r.snapshot
    assert r.vm.state == pb.VM_STATE_PAUSED      # no `resume`: left paused, as Firecracker
    assert (s.id, s.source_vm) == ("s-grpc", "snap-src")
    assert s.memory_bytes == 32 << 20 and os.path.getsize(s.mem_path) == s.memory_bytes
    assert s.state_bytes == os.path.getsize(s.state_path) > F.HEADER_SIZE
    assert 0 < s.disk_bytes < s.memory_bytes      # the memory file is sparse
    assert s.spec.boot.kernel_path == guest("counter") and s.created_at.seconds > 0
    assert [x.id for x in stub.ListSnapshots(pb.ListSnapshotsRequest(
        source_vm="snap-src")).snapshots] == ["s-grpc"]
    assert stub.GetSnapshot(pb.GetSnapshotRequest(snapshot_id="s-grpc")).snapshot == s

    stub.StopVm(pb.StopVmRequest(vm_id="snap-src", force=True), timeout=30)
    before = whole_console(stub, "snap-src")
    assert "DONE" not in before

    # Restored paused (resume_vm unset), then resumed: the count goes on from the snapshot.
    vm = stub.RestoreVm(pb.RestoreVmRequest(snapshot_id="s-grpc", vm_id="snap-dst",
                                            labels={"from": "s-grpc"}), timeout=60).vm
    assert vm.state == pb.VM_STATE_PAUSED and vm.vmm_pid > 0
    assert dict(vm.labels) == {"from": "s-grpc"} and vm.spec == s.spec
    stub.ResumeVm(pb.ResumeVmRequest(vm_id="snap-dst"), timeout=30)
    after = whole_console(stub, "snap-dst")
    assert "COUNTER START" not in after          # not booted: restored
    assert counts(before + after) == list(range(COUNT)), after
    assert after.rstrip().endswith("DONE")
    wait_state(stub, "snap-dst", pb.VM_STATE_STOPPED)

    # A second clone from the same files, running at once (resume_vm).
    vm = stub.RestoreVm(pb.RestoreVmRequest(snapshot_id="s-grpc", vm_id="snap-dst2",
                                            resume_vm=True), timeout=60).vm
    assert vm.state == pb.VM_STATE_RUNNING and dict(vm.labels) == {}
    assert counts(before + whole_console(stub, "snap-dst2")) == list(range(COUNT))

    stub.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id="s-grpc"), timeout=10)
    assert not os.path.exists(os.path.dirname(s.state_path))
    assert code_of(stub.GetSnapshot, pb.GetSnapshotRequest(snapshot_id="s-grpc")) == \
        grpc.StatusCode.NOT_FOUND
    for vm_id in ("snap-src", "snap-dst", "snap-dst2"):
        wait_state(stub, vm_id, pb.VM_STATE_STOPPED)
        stub.DeleteVm(pb.DeleteVmRequest(vm_id=vm_id), timeout=10)


def test_snapshot_errors_have_their_status_codes(stub, guest):
    C = grpc.StatusCode
    create, restore = stub.CreateSnapshot, stub.RestoreVm
    assert code_of(create, pb.CreateSnapshotRequest(vm_id="nope")) == C.NOT_FOUND
    stub.CreateVm(pb.CreateVmRequest(vm_id="snap-err", spec=counter_spec(guest)), timeout=30)
    assert code_of(create, pb.CreateSnapshotRequest(vm_id="snap-err", pause=True)) == \
        C.FAILED_PRECONDITION                   # CREATED: nothing to save
    assert code_of(create, pb.CreateSnapshotRequest(vm_id="snap-err",
                                                    snapshot_id="bad id!")) == C.INVALID_ARGUMENT
    assert code_of(create, pb.CreateSnapshotRequest(
        vm_id="snap-err", snapshot_type=pb.SNAPSHOT_TYPE_DIFF)) == C.UNIMPLEMENTED

    stub.StartVm(pb.StartVmRequest(vm_id="snap-err"), timeout=60)
    stub.PauseVm(pb.PauseVmRequest(vm_id="snap-err"), timeout=30)
    # Already paused: no `pause` needed. No id: one is made from the VM's.
    snap = stub.CreateSnapshot(pb.CreateSnapshotRequest(vm_id="snap-err"), timeout=120).snapshot
    assert re.fullmatch(r"snap-err-\d{8}-\d{6}", snap.id), snap.id
    assert code_of(create, pb.CreateSnapshotRequest(vm_id="snap-err", snapshot_id=snap.id)) \
        == C.ALREADY_EXISTS
    r = stub.CreateSnapshot(pb.CreateSnapshotRequest(vm_id="snap-err", snapshot_id="e2",
                                                     resume=True), timeout=120)
    assert r.vm.state == pb.VM_STATE_PAUSED     # resume only undoes this call's own pause

    assert code_of(restore, pb.RestoreVmRequest(snapshot_id="nope", vm_id="x")) == C.NOT_FOUND
    assert code_of(restore, pb.RestoreVmRequest(snapshot_id="e2", vm_id="snap-err")) == \
        C.ALREADY_EXISTS
    assert code_of(restore, pb.RestoreVmRequest(snapshot_id="e2", vm_id="bad id!")) == \
        C.INVALID_ARGUMENT
    for bad in ([pb.NetworkOverride(iface_id="eth0", host_dev_name="tap9")],
                [pb.NetworkOverride(host_dev_name="tap9")]):
        assert code_of(restore, pb.RestoreVmRequest(snapshot_id="e2", vm_id="x",
                                                    network_overrides=bad)) == C.INVALID_ARGUMENT
    assert code_of(restore, pb.RestoreVmRequest(snapshot_id="e2", vm_id="x",
                                                vsock_uds_path="/tmp/v.sock")) == \
        C.INVALID_ARGUMENT                      # the snapshot has no vsock device

    # A damaged state file: refused by the VMM, no VM left behind.
    state_path = stub.GetSnapshot(pb.GetSnapshotRequest(snapshot_id="e2")).snapshot.state_path
    data = bytearray(open(state_path, "rb").read())
    data[F.HEADER_SIZE + 5] ^= 0xFF
    open(state_path, "wb").write(bytes(data))
    with pytest.raises(grpc.RpcError) as ei:
        restore(pb.RestoreVmRequest(snapshot_id="e2", vm_id="x"), timeout=60)
    assert ei.value.code() == C.FAILED_PRECONDITION and "sha256" in ei.value.details()
    assert code_of(stub.GetVm, pb.GetVmRequest(vm_id="x")) == C.NOT_FOUND

    for sid in (snap.id, "e2"):
        stub.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=sid), timeout=10)
    assert code_of(stub.DeleteSnapshot, pb.DeleteSnapshotRequest(snapshot_id="e2")) == \
        C.NOT_FOUND
    assert code_of(stub.DeleteSnapshot, pb.DeleteSnapshotRequest()) == C.INVALID_ARGUMENT
    stub.StopVm(pb.StopVmRequest(vm_id="snap-err", force=True), timeout=30)
    stub.DeleteVm(pb.DeleteVmRequest(vm_id="snap-err"), timeout=10)


def test_reflection_describes_the_snapshot_rpcs(shared_server):
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(shared_server.channel))
    svc = pool.FindServiceByName("nodesvc.v1.NodeService")
    for name in ("CreateSnapshot", "ListSnapshots", "GetSnapshot", "DeleteSnapshot",
                 "RestoreVm"):
        assert svc.FindMethodByName(name) is not None
    restore = svc.FindMethodByName("RestoreVm").input_type
    assert restore.fields_by_name["network_overrides"].message_type.full_name == \
        "nodesvc.v1.NetworkOverride"
