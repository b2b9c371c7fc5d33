"""NodeClient against a real node service: every RPC it wraps, happy path and errors."""

import datetime
import time

import grpc
import pytest

from nodesvc_client import NodeClient, NodeError, SpecError, Tls, VmList, pb
from nodesvc_client.cli import main as nodectl
from tests.clients.conftest import spec_dict
from tests.service.test_service_transport import _free_port, pki  # noqa: F401 (fixture)

ST = pb.VmState
C = grpc.StatusCode


def code_of(fn, *args, **kwargs) -> C:
    with pytest.raises(NodeError) as ei:
        fn(*args, **kwargs)
    assert ei.value.message and str(ei.value).startswith(ei.value.code.name + ": ")
    return ei.value.code


def test_node_info_and_health(client):
    info = client.node_info()
    assert info.cpus >= 1 and info.versions["api"] == "nodesvc.v1"
    assert client.health() == "SERVING"
    client.wait_ready(5)


def test_unreachable_node_is_unavailable(tmp_path):
    with NodeClient(str(tmp_path / "none.sock"), timeout=2) as c:
        assert code_of(c.node_info) == C.UNAVAILABLE
        assert code_of(c.wait_ready, 0.3) == C.UNAVAILABLE


def test_create_get_list_delete(client, guest):
    kernel = guest("hello")
    vm = client.create_vm("s-created", spec_dict(kernel), labels={"suite": "clients"})
    assert vm.state == ST.VM_STATE_CREATED and vm.spec.boot.kernel_path == kernel
    assert client.get_vm("s-created").labels == {"suite": "clients"}
    vms = client.list_vms({"suite": "clients"}, "created")
    assert isinstance(vms, VmList) and [v.id for v in vms] == ["s-created"]
    assert vms.revision >= vm.revision
    assert client.list_vms({"suite": "nope"}) == []
    assert client.list_vms(state=["running", "paused"]) == []
    assert client.delete_vm("s-created") is None
    assert code_of(client.get_vm, "s-created") == C.NOT_FOUND


def test_lifecycle_errors_map_to_status_codes(client, guest):
    kernel = guest("hello")
    spec = spec_dict(kernel)
    client.create_vm("s-errs", pb.VmSpec(machine=pb.MachineConfig(vcpus=1, memory_mib=32),
                                         boot=pb.BootSource(kernel_path=kernel)))
    assert code_of(client.create_vm, "s-errs", spec) == C.ALREADY_EXISTS
    assert code_of(client.create_vm, "s-bad", {**spec, "machine": {"vcpus": 0,
                                                                  "memory_mib": 32}}) \
        == C.INVALID_ARGUMENT
    for op in (client.pause_vm, client.resume_vm, client.stop_vm):
        assert code_of(op, "s-errs") == C.FAILED_PRECONDITION
    for op in (client.get_vm, client.start_vm, client.delete_vm, client.get_metadata):
        assert code_of(op, "no-such-vm") == C.NOT_FOUND
    assert code_of(client.get_vm, "bad id!") == C.INVALID_ARGUMENT
    # Client-side checks fail before any call, with the same error type.
    with pytest.raises(SpecError, match="spec.machine.vcpu: unknown key"):
        client.create_vm("s-x", {"machine": {"vcpu": 1}})
    with pytest.raises(SpecError, match="state: must be one of"):
        client.list_vms(state="asleep")
    client.delete_vm("s-errs")


def test_metadata_and_live_device_changes(client, guest, tmp_path):
    disk, disk2 = tmp_path / "a.img", tmp_path / "b.img"
    for d in (disk, disk2):
        d.write_bytes(b"\0" * 4096)
    spec = {**spec_dict(guest("hello")),
            "drives": [{"drive_id": "data", "path_on_host": str(disk)}]}
    client.create_vm("s-meta", spec)
    assert client.put_metadata("s-meta", {"a": {"b": 1}, "x": 1}) == {"a": {"b": 1}, "x": 1}
    assert client.patch_metadata("s-meta", {"a": {"c": 2}, "x": None}) == \
        {"a": {"b": 1, "c": 2}}
    assert client.get_metadata("s-meta") == {"a": {"b": 1, "c": 2}}
    assert client.put_metadata("s-meta", '{"raw": "text"}') == {"raw": "text"}
    assert code_of(client.put_metadata, "s-meta", "[1, 2]") == C.INVALID_ARGUMENT
    assert code_of(client.patch_metadata, "s-meta", "{nope") == C.INVALID_ARGUMENT

    vm = client.update_drive("s-meta", "data", str(disk2))
    assert vm.spec.drives[0].path_on_host == str(disk2)
    assert code_of(client.update_drive, "s-meta", "other", str(disk2)) == C.NOT_FOUND
    vm = client.update_rate_limiter("s-meta", "data", {"ops": {"size": 100,
                                                               "refill_time_ms": 1000}})
    assert vm.spec.drives[0].rate_limiter.ops.size == 100
    vm = client.update_rate_limiter("s-meta", "data", None)
    assert not vm.spec.drives[0].HasField("rate_limiter")
    assert code_of(client.update_rate_limiter, "s-meta", "eth0/rx", None) == C.NOT_FOUND
    client.delete_vm("s-meta")


def test_stream_errors_surface_while_iterating(client):
    assert code_of(lambda: next(iter(client.stream_console("no-such-vm")))) == C.NOT_FOUND
    assert code_of(lambda: next(client.stream_logs("no-such-vm"))) == C.NOT_FOUND
    future = client.list_vms().revision + 1000
    assert code_of(lambda: next(client.watch_vms(future))) == C.OUT_OF_RANGE
    assert code_of(lambda: next(client.watch_vms(vm_id="bad id!"))) == C.INVALID_ARGUMENT
    assert code_of(lambda: next(client.attach_console("no-such-vm"))) == C.NOT_FOUND


def test_plaintext_tcp_needs_an_explicit_opt_in():
    with pytest.raises(SpecError, match="refusing plaintext TCP"):
        NodeClient("127.0.0.1:1")
    NodeClient("127.0.0.1:1", insecure=True).close()


def test_mutual_tls(make_server, pki, capsys):  # noqa: F811
    port, d = _free_port(), pki["dir"]
    make_server("--listen", f"127.0.0.1:{port}", "--tls-cert", str(d / "server.pem"),
                "--tls-key", str(d / "server.key"), "--tls-client-ca", str(d / "ca.pem"))
    tls = Tls(ca=str(d / "ca.pem"), cert=str(d / "client.pem"), key=str(d / "client.key"),
              server_name="localhost")
    with NodeClient(f"127.0.0.1:{port}", tls=tls, timeout=5) as c:
        assert c.node_info().cpus >= 1
    rogue = Tls(ca=pki["ca"], cert=pki["rogue"], key=pki["rogue.key"], server_name="localhost")
    with NodeClient(f"127.0.0.1:{port}", tls=rogue, timeout=5) as c:
        assert code_of(c.node_info) == C.UNAVAILABLE
    # nodectl's TLS options make the same client.
    tcp = ["--target", f"127.0.0.1:{port}", "--timeout", "5"]
    tls_args = ["--tls-ca", str(d / "ca.pem"), "--tls-cert", str(d / "client.pem"),
                "--tls-key", str(d / "client.key"), "--tls-server-name", "localhost"]
    capsys.readouterr()
    assert nodectl([*tcp, *tls_args, "health"]) == 0
    assert nodectl([*tcp, "health"]) == 1
    assert nodectl([*tcp, *tls_args[:2], "health"]) == 1
    assert capsys.readouterr() == ("SERVING\n", "nodectl: INVALID_ARGUMENT: refusing plaintext "
                                   f"TCP to 127.0.0.1:{port}: give TLS credentials (the node "
                                   "service requires mutual TLS), or allow plaintext "
                                   "explicitly (insecure=True, nodectl --insecure)\n"
                                   "nodectl: INVALID_ARGUMENT: --tls-ca, --tls-cert and "
                                   "--tls-key go together (mutual TLS)\n")


# --- real VMM processes ---------------------------------------------------------------------

def read_until(stream, marker: bytes, timeout: float = 15.0) -> bytes:
    buf, deadline = b"", time.monotonic() + timeout
    for data in stream:
        buf += data
        if marker in buf or time.monotonic() > deadline:
            break
    assert marker in buf, buf
    return buf


def wait_state(client, vm_id, state, timeout=10.0) -> pb.Vm:
    deadline = time.monotonic() + timeout
    while (vm := client.get_vm(vm_id)).state != state and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ST.Name(vm.state) == ST.Name(state), vm.reason
    return vm


@pytest.mark.kvm
def test_lifecycle_console_logs_and_watch(client, guest):
    rev = client.list_vms().revision
    events = client.watch_vms(rev, vm_id="s-echo")
    client.create_vm("s-echo", spec_dict(guest("echo")))
    vm = client.start_vm("s-echo")
    assert vm.state == ST.VM_STATE_RUNNING and vm.vmm_pid > 0

    with client.stream_console("s-echo", include_history=True) as console:
        assert b"READY" in read_until(console, b"READY")
        with client.attach_console("s-echo", iter([b"ab", b"c"])) as attach:
            assert b"abc" in read_until(attach, b"abc")
        assert b"abc" in read_until(console, b"abc")

    with client.stream_logs("s-echo", include_history=True, metrics=False) as logs:
        assert any("VM started" in e.log.message for e in (next(logs) for _ in range(2)))

    assert client.pause_vm("s-echo").state == ST.VM_STATE_PAUSED
    assert client.resume_vm("s-echo").state == ST.VM_STATE_RUNNING
    vm = client.stop_vm("s-echo", grace=datetime.timedelta(milliseconds=200))
    assert vm.state == ST.VM_STATE_STOPPED and "by force" in vm.reason
    client.delete_vm("s-echo")

    got = [next(events) for _ in range(8)]
    events.cancel()
    assert list(events) == []       # a cancelled stream just ends, quietly
    assert [states(e) for e in got] == ["CREATED", "STARTING", "RUNNING", "PAUSED", "RUNNING",
                                        "STOPPING", "STOPPED", "DELETED"]


@pytest.mark.kvm
def test_console_stream_ends_with_the_guest(client, guest):
    client.create_vm("s-hello", spec_dict(guest("hello")), start=True)
    out = b"".join(client.stream_console("s-hello", include_history=True, timeout=15))
    assert out == b"HELLO FROM TINY GUEST\n"
    assert wait_state(client, "s-hello", ST.VM_STATE_STOPPED).reason.startswith("guest-reset")
    client.delete_vm("s-hello")


def states(ev: pb.VmEvent) -> str:
    if ev.type == pb.VmEvent.TYPE_DELETED:
        return "DELETED"
    return ST.Name(ev.vm.state).removeprefix("VM_STATE_")
