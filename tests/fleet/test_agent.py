"""The node side without a reachable etcd: the node's own API keeps working; only fleet VMs
are held back by the gate (no lease, no start)."""

from __future__ import annotations

import os
import shutil

import grpc
import pytest

from nodesvc.api.v1 import nodesvc_pb2 as pb
from nodesvc.api.v1 import nodesvc_pb2_grpc as pb_grpc

from .cluster import FleetNode, free_ports, tiny_spec, wait_for

pytestmark = pytest.mark.kvm


class NoEtcd:
    endpoints = [f"127.0.0.1:{free_ports(1)[0]}"]     # nothing listens there


@pytest.fixture
def lone_node():
    if os.geteuid() != 0 or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("needs root and /dev/kvm")
    if not shutil.which(os.environ.get("GUEST_CC") or "gcc"):
        pytest.skip("gcc is not installed: cannot build the tiny guests")
    from tests.guests.build import build_guest
    n = FleetNode("lone", NoEtcd(), memory_mib=256, labels={}, extra=("--no-jail",)).start()
    n.kernel = str(build_guest("idle"))
    yield n
    n.stop()


def test_node_api_works_without_etcd_and_fleet_vms_wait(lone_node):
    from google.protobuf import json_format
    spec = json_format.ParseDict(tiny_spec(lone_node.kernel), pb.VmSpec())
    with grpc.insecure_channel(f"unix:{lone_node.socket}") as ch:
        stub = pb_grpc.NodeServiceStub(ch)
        wait_for(lambda: _serving(stub), 20, "node API")
        vm = stub.CreateVm(pb.CreateVmRequest(vm_id="local", spec=spec, start=True),
                           timeout=30).vm
        assert vm.state == pb.VM_STATE_RUNNING
        stub.CreateVm(pb.CreateVmRequest(vm_id="fleet-x", spec=spec,
                                         labels={"fleet.nodesvc/id": "fleet-x",
                                                 "fleet.nodesvc/assignment": "7"}), timeout=30)
        with pytest.raises(grpc.RpcError) as e:
            stub.StartVm(pb.StartVmRequest(vm_id="fleet-x"), timeout=30)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "fleet fence: this node holds no live fleet lease" in e.value.details()
        stub.StopVm(pb.StopVmRequest(vm_id="local", force=True), timeout=30)
    assert lone_node.proc.poll() is None


def _serving(stub) -> bool:
    try:
        stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=1)
        return True
    except grpc.RpcError:
        return False
