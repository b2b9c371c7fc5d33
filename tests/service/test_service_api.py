"""Every RPC's bad-input classes map to the right status code with a message naming the
problem. No VM is started here (capacity is checked before a VMM is spawned)."""

import json

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from nodesvc.api.v1 import nodesvc_pb2 as pb
from tests.service.conftest import vm_spec

C = grpc.StatusCode


def rpc_error(fn, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as ei:
        fn(*args, **kw)
    return ei.value


def expect(code, fn, req, *fragments):
    err = rpc_error(fn, req, timeout=10)
    assert err.code() == code, err.details()
    for f in fragments:
        assert f in err.details(), err.details()
    return err


@pytest.fixture(scope="module")
def stub(shared_server):
    return shared_server.stub


@pytest.fixture(scope="module")
def kernel(guest):
    return guest("hello")


def spec_with(kernel, **changes) -> pb.VmSpec:
    s = vm_spec(kernel)
    for path, value in changes.items():
        obj = s
        *parents, leaf = path.split(".")
        for p in parents:
            obj = getattr(obj, p)
        if isinstance(value, list):
            getattr(obj, leaf).extend(value)
        elif isinstance(value, pb.Vsock) or isinstance(value, pb.MetadataServiceConfig):
            getattr(obj, leaf).CopyFrom(value)
        else:
            setattr(obj, leaf, value)
    return s


BAD_SPECS = [
    ({"machine.vcpus": 0}, "spec.machine.vcpus"),
    ({"machine.vcpus": 33}, "spec.machine.vcpus"),
    ({"machine.memory_mib": 8}, "spec.machine.memory_mib"),
    ({"machine.memory_mib": 70000}, "spec.machine.memory_mib"),
    ({"machine.vcpus": 3, "machine.smt": True}, "spec.machine.smt"),
    ({"boot.kernel_path": ""}, "spec.boot.kernel_path: is required"),
    ({"boot.kernel_path": "relative/vmlinux"}, "absolute"),
    ({"boot.kernel_path": "/nonexistent/vmlinux"}, "does not exist"),
    ({"boot.kernel_path": "/etc/hostname"}, "spec.boot.kernel_path"),
    ({"boot.initrd_path": "/nonexistent/initrd"}, "spec.boot.initrd_path"),
    ({"boot.boot_args": "console=ttyS0\x01"}, "spec.boot.boot_args"),
    ({"boot.boot_args": "x" * 3000}, "spec.boot.boot_args"),
    ({"drives": [pb.Drive(drive_id="root", path_on_host="disk.img")]},
     "spec.drives[0].path_on_host"),
    ({"drives": [pb.Drive(drive_id="a", path_on_host="/etc/hostname"),
                 pb.Drive(drive_id="a", path_on_host="/etc/hostname")]}, "duplicate id"),
    ({"drives": [pb.Drive(drive_id="a", path_on_host="/etc/hostname", is_root_device=True),
                 pb.Drive(drive_id="b", path_on_host="/etc/hostname", is_root_device=True)]},
     "spec.drives[1].is_root_device"),
    ({"drives": [pb.Drive(drive_id="bad id", path_on_host="/etc/hostname")]},
     "spec.drives[0].drive_id"),
    ({"network_interfaces": [pb.NetworkInterface(iface_id="eth0", host_dev_name="tap0",
                                                 guest_mac="zz:00")]},
     "spec.network_interfaces[0].guest_mac"),
    ({"network_interfaces": [pb.NetworkInterface(iface_id="eth0",
                                                 host_dev_name="a-very-long-tap-name")]},
     "spec.network_interfaces[0].host_dev_name"),
    ({"vsock": pb.Vsock(guest_cid=2, uds_path="/tmp/v.sock")}, "spec.vsock.guest_cid"),
    ({"metadata_service": pb.MetadataServiceConfig(network_interfaces=["eth9"])},
     "spec.metadata_service.network_interfaces"),
]


@pytest.mark.parametrize("changes,fragment", BAD_SPECS,
                         ids=[f"{i}-{next(iter(c))}" for i, (c, _) in enumerate(BAD_SPECS)])
def test_create_rejects_bad_specs(stub, kernel, changes, fragment):
    req = pb.CreateVmRequest(vm_id="bad-spec", spec=spec_with(kernel, **changes))
    expect(C.INVALID_ARGUMENT, stub.CreateVm, req, fragment)
    expect(C.NOT_FOUND, stub.GetVm, pb.GetVmRequest(vm_id="bad-spec"))   # nothing created


@pytest.mark.parametrize("vm_id", ["", "bad/id", "x" * 65, "white space"])
def test_create_rejects_bad_ids(stub, kernel, vm_id):
    expect(C.INVALID_ARGUMENT, stub.CreateVm,
           pb.CreateVmRequest(vm_id=vm_id, spec=vm_spec(kernel)), "vm_id")


def test_create_rejects_missing_spec_and_bad_labels(stub, kernel):
    expect(C.INVALID_ARGUMENT, stub.CreateVm, pb.CreateVmRequest(vm_id="nospec"), "spec")
    expect(C.INVALID_ARGUMENT, stub.CreateVm,
           pb.CreateVmRequest(vm_id="nomachine", spec=pb.VmSpec(boot=pb.BootSource(
               kernel_path=kernel))), "spec.machine: is required")
    expect(C.INVALID_ARGUMENT, stub.CreateVm,
           pb.CreateVmRequest(vm_id="badlabel", spec=vm_spec(kernel), labels={"-x": "1"}),
           "labels")


def test_metadata_service_is_accepted(stub, kernel):
    """Issue 10: the VMM serves MMDS, so metadata_service is accepted (and translated to
    mmds-config); a bad address is named, and nothing is created for it."""
    spec = spec_with(kernel, network_interfaces=[pb.NetworkInterface(iface_id="eth0",
                                                                     host_dev_name="tap-ns0")])
    spec.metadata_service.CopyFrom(pb.MetadataServiceConfig(
        network_interfaces=["eth0"], version=pb.MetadataServiceConfig.VERSION_V2))
    vm = stub.CreateVm(pb.CreateVmRequest(vm_id="with-mmds", spec=spec)).vm
    assert list(vm.spec.metadata_service.network_interfaces) == ["eth0"]
    assert vm.spec.metadata_service.version == pb.MetadataServiceConfig.VERSION_V2
    assert vm.spec.metadata_service.ipv4_address == "169.254.169.254"
    spec.metadata_service.ipv4_address = "10.0.0.1"
    expect(C.INVALID_ARGUMENT, stub.CreateVm, pb.CreateVmRequest(vm_id="bad-mmds", spec=spec),
           "spec.metadata_service.ipv4_address", "169.254.0.0/16")
    expect(C.NOT_FOUND, stub.GetVm, pb.GetVmRequest(vm_id="bad-mmds"))   # nothing created


def test_a_device_kind_without_its_plugin_is_unimplemented(make_server, kernel, monkeypatch):
    # The node service started with the rng plugin blocked: no node here provides it.
    monkeypatch.setenv("NODESVC_BLOCK_PLUGINS", "virtio_rng")
    stub = make_server().stub
    spec = spec_with(kernel)
    spec.entropy.SetInParent()
    expect(C.UNIMPLEMENTED, stub.CreateVm, pb.CreateVmRequest(vm_id="rng", spec=spec),
           "no plugin on this node provides device kind 'virtio-rng'")
    expect(C.NOT_FOUND, stub.GetVm, pb.GetVmRequest(vm_id="rng"))
    stub.CreateVm(pb.CreateVmRequest(vm_id="no-rng", spec=spec_with(kernel)))   # the rest works
    names = [p.name for p in stub.GetNodeInfo(pb.GetNodeInfoRequest()).plugins]
    assert "virtio_rng" not in names and "virtio_blk" in names


def test_device_plugins_validate_their_sections(stub, kernel):
    spec = spec_with(kernel, network_interfaces=[pb.NetworkInterface(
        iface_id="eth0", host_dev_name="tap-ns0", mtu=10)])
    expect(C.INVALID_ARGUMENT, stub.CreateVm, pb.CreateVmRequest(vm_id="bad-mtu", spec=spec),
           "spec.network_interfaces[eth0].mtu")


def test_stopped_vm_device_updates_edit_the_spec(stub, kernel, tmp_path):
    disk, disk2 = tmp_path / "a.img", tmp_path / "b.img"
    for d in (disk, disk2):
        d.write_bytes(bytes(4096))
    spec = spec_with(kernel, drives=[pb.Drive(drive_id="data", path_on_host=str(disk))])
    stub.CreateVm(pb.CreateVmRequest(vm_id="drive-vm", spec=spec))
    rev = stub.ListVms(pb.ListVmsRequest()).revision
    vm = stub.UpdateDrive(pb.UpdateDriveRequest(vm_id="drive-vm", drive_id="data",
                                                path_on_host=str(disk2))).vm
    assert vm.spec.drives[0].path_on_host == str(disk2)
    expect(C.INVALID_ARGUMENT, stub.UpdateDrive,
           pb.UpdateDriveRequest(vm_id="drive-vm", drive_id="data", path_on_host="rel.img"),
           "path_on_host")
    limiter = pb.RateLimiter(ops=pb.TokenBucket(size=100, refill_time_ms=1000))
    vm = stub.UpdateRateLimiter(pb.UpdateRateLimiterRequest(
        vm_id="drive-vm", device_id="data", rate_limiter=limiter)).vm
    assert vm.spec.drives[0].rate_limiter == limiter
    events = stub.WatchVms(pb.WatchVmsRequest(since_revision=rev, vm_id="drive-vm"), timeout=5)
    assert [next(events).type for _ in range(2)] == [pb.VmEvent.TYPE_UPDATED] * 2
    events.cancel()
    stub.DeleteVm(pb.DeleteVmRequest(vm_id="drive-vm"))


def test_create_get_list_delete(stub, kernel):
    vm = stub.CreateVm(pb.CreateVmRequest(vm_id="api-a", spec=vm_spec(kernel),
                                          labels={"app": "web", "tier": "1"})).vm
    stub.CreateVm(pb.CreateVmRequest(vm_id="api-b", spec=vm_spec(kernel), labels={"app": "db"}))
    assert vm.state == pb.VM_STATE_CREATED and vm.revision > 0
    assert vm.spec.machine.memory_mib == 32 and vm.spec.boot.kernel_path == kernel
    expect(C.ALREADY_EXISTS, stub.CreateVm,
           pb.CreateVmRequest(vm_id="api-a", spec=vm_spec(kernel)), "api-a")
    got = stub.GetVm(pb.GetVmRequest(vm_id="api-a")).vm
    assert got.labels == {"app": "web", "tier": "1"}
    listed = stub.ListVms(pb.ListVmsRequest(label_selector={"app": "web"}))
    assert [v.id for v in listed.vms] == ["api-a"] and listed.revision >= vm.revision
    created = stub.ListVms(pb.ListVmsRequest(states=[pb.VM_STATE_CREATED])).vms
    assert {"api-a", "api-b"} <= {v.id for v in created}
    assert not stub.ListVms(pb.ListVmsRequest(states=[pb.VM_STATE_RUNNING],
                                              label_selector={"app": "web"})).vms
    expect(C.INVALID_ARGUMENT, stub.ListVms, pb.ListVmsRequest(states=[0]), "states")
    for vm_id in ("api-a", "api-b"):
        stub.DeleteVm(pb.DeleteVmRequest(vm_id=vm_id))
    expect(C.NOT_FOUND, stub.DeleteVm, pb.DeleteVmRequest(vm_id="api-a"), "api-a")


def test_wrong_state_and_missing_vm(stub, kernel):
    stub.CreateVm(pb.CreateVmRequest(vm_id="idle-vm", spec=vm_spec(kernel)))
    for call, req in ((stub.StopVm, pb.StopVmRequest(vm_id="idle-vm")),
                      (stub.PauseVm, pb.PauseVmRequest(vm_id="idle-vm")),
                      (stub.ResumeVm, pb.ResumeVmRequest(vm_id="idle-vm"))):
        expect(C.FAILED_PRECONDITION, call, req, "idle-vm", "CREATED")
    err = rpc_error(lambda: list(stub.AttachConsole(
        iter([pb.ConsoleInput(vm_id="idle-vm", data=b"x")]), timeout=5)))
    assert err.code() == C.FAILED_PRECONDITION, err.details()
    expect(C.INVALID_ARGUMENT, stub.StopVm,
           pb.StopVmRequest(vm_id="idle-vm", grace_period=Duration(seconds=-1)), "grace_period")
    for call, req in ((stub.StartVm, pb.StartVmRequest(vm_id="ghost")),
                      (stub.StopVm, pb.StopVmRequest(vm_id="ghost")),
                      (stub.GetVm, pb.GetVmRequest(vm_id="ghost")),
                      (stub.GetMetadata, pb.GetMetadataRequest(vm_id="ghost"))):
        expect(C.NOT_FOUND, call, req, "ghost")
    err = rpc_error(lambda: list(stub.StreamConsole(pb.StreamConsoleRequest(vm_id="ghost"),
                                                    timeout=5)))
    assert err.code() == C.NOT_FOUND
    stub.DeleteVm(pb.DeleteVmRequest(vm_id="idle-vm"))


def test_device_updates_name_the_missing_device(stub, kernel):
    stub.CreateVm(pb.CreateVmRequest(vm_id="dev-vm", spec=vm_spec(kernel)))
    expect(C.NOT_FOUND, stub.UpdateDrive,
           pb.UpdateDriveRequest(vm_id="dev-vm", drive_id="rootfs", path_on_host="/etc/hostname"),
           "no drive 'rootfs'")
    expect(C.NOT_FOUND, stub.UpdateRateLimiter,
           pb.UpdateRateLimiterRequest(vm_id="dev-vm", device_id="eth0/rx"), "eth0/rx")
    stub.DeleteVm(pb.DeleteVmRequest(vm_id="dev-vm"))


def test_metadata_put_patch_get(stub, kernel):
    stub.CreateVm(pb.CreateVmRequest(vm_id="md-vm", spec=vm_spec(kernel)))
    assert json.loads(stub.GetMetadata(pb.GetMetadataRequest(vm_id="md-vm")).json) == {}
    stub.PutMetadata(pb.PutMetadataRequest(vm_id="md-vm", json='{"a": {"b": 1, "c": 2}}'))
    out = stub.PatchMetadata(pb.PatchMetadataRequest(vm_id="md-vm",
                                                     json='{"a": {"b": null, "d": 3}, "e": 4}'))
    assert json.loads(out.json) == {"a": {"c": 2, "d": 3}, "e": 4}
    assert json.loads(stub.GetMetadata(pb.GetMetadataRequest(vm_id="md-vm")).json) == \
        {"a": {"c": 2, "d": 3}, "e": 4}
    expect(C.INVALID_ARGUMENT, stub.PutMetadata,
           pb.PutMetadataRequest(vm_id="md-vm", json="{not json"), "not valid JSON")
    expect(C.INVALID_ARGUMENT, stub.PutMetadata,
           pb.PutMetadataRequest(vm_id="md-vm", json="[1, 2]"), "JSON object")
    expect(C.INVALID_ARGUMENT, stub.PutMetadata,
           pb.PutMetadataRequest(vm_id="md-vm", json=json.dumps({"k": "x" * 60000})), "bytes")
    stub.DeleteVm(pb.DeleteVmRequest(vm_id="md-vm"))


def test_watch_rejects_resume_points_outside_the_history(stub):
    rev = stub.ListVms(pb.ListVmsRequest()).revision
    err = rpc_error(lambda: next(stub.WatchVms(pb.WatchVmsRequest(since_revision=rev + 100),
                                               timeout=5)))
    assert err.code() == C.OUT_OF_RANGE and "future" in err.details()


def test_watch_history_is_bounded(make_server, kernel):
    s = make_server("--event-history", "2")
    for i in range(4):
        s.stub.CreateVm(pb.CreateVmRequest(vm_id=f"h{i}", spec=vm_spec(kernel)))
    err = rpc_error(lambda: next(s.stub.WatchVms(pb.WatchVmsRequest(since_revision=1),
                                                 timeout=5)))
    assert err.code() == C.OUT_OF_RANGE and "older than the retained history" in err.details()
    events = s.stub.WatchVms(pb.WatchVmsRequest(since_revision=2), timeout=5)
    assert [next(events).vm.id for _ in range(2)] == ["h2", "h3"]
    events.cancel()


def test_capacity_is_checked_before_spawning(make_server, kernel):
    s = make_server("--memory-mib", "300", "--reserve-mib", "256", "--cpu-overcommit", "0.5")
    s.stub.CreateVm(pb.CreateVmRequest(vm_id="big-mem", spec=vm_spec(kernel, memory_mib=64)))
    expect(C.RESOURCE_EXHAUSTED, s.stub.StartVm, pb.StartVmRequest(vm_id="big-mem"),
           "64 MiB", "44 MiB")
    s.stub.CreateVm(pb.CreateVmRequest(vm_id="many-cpu", spec=vm_spec(kernel, vcpus=2)))
    expect(C.RESOURCE_EXHAUSTED, s.stub.StartVm, pb.StartVmRequest(vm_id="many-cpu"), "vCPUs")
    assert s.stub.GetVm(pb.GetVmRequest(vm_id="big-mem")).vm.state == pb.VM_STATE_CREATED


def test_node_info(stub, kernel):
    stub.CreateVm(pb.CreateVmRequest(vm_id="info-vm", spec=vm_spec(kernel)))
    info = stub.GetNodeInfo(pb.GetNodeInfoRequest())
    assert info.cpus >= 1 and info.memory_mib > 0
    assert info.vms_by_state["CREATED"] >= 1 and set(info.vms_by_state) >= {"RUNNING", "FAILED"}
    assert info.versions["api"] == "nodesvc.v1" and info.versions["python"]
    assert {"serial", "i8042"} <= {p.name for p in info.plugins}
    stub.DeleteVm(pb.DeleteVmRequest(vm_id="info-vm"))


def test_start_rechecks_the_spec(stub, kernel, tmp_path):
    moved = tmp_path / "vmlinux"
    moved.write_bytes(open(kernel, "rb").read())
    stub.CreateVm(pb.CreateVmRequest(vm_id="moved-kernel", spec=vm_spec(str(moved))))
    moved.unlink()
    expect(C.FAILED_PRECONDITION, stub.StartVm, pb.StartVmRequest(vm_id="moved-kernel"),
           "spec.boot.kernel_path", "No such file")
    assert stub.GetVm(pb.GetVmRequest(vm_id="moved-kernel")).vm.state == pb.VM_STATE_CREATED
    stub.DeleteVm(pb.DeleteVmRequest(vm_id="moved-kernel"))
