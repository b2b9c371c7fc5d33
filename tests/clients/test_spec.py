"""spec_from_dict / spec_from_file and the other client-side checks (no server needed)."""

import json

import pytest

from nodesvc_client import (SpecError, create_request_from_dict, pb, spec_from_dict,
                            spec_from_file)
from nodesvc_client.api import as_states
from nodesvc_client.connect import normalize_target
from nodesvc_client.console import parse_escape

FULL = {
    "machine": {"vcpus": 2, "memory_mib": 256, "smt": False},
    "boot": {"kernel_path": "/k/vmlinux", "initrd_path": "/k/initrd", "boot_args": "quiet"},
    "drives": [{"drive_id": "root", "path_on_host": "/img/root.ext4", "is_root_device": True,
                "cache_type": "writeback",
                "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time_ms": 100}}}],
    "network_interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0",
                            "guest_mac": "02:00:00:00:00:01", "mtu": 1500}],
    "vsock": {"guest_cid": 3, "uds_path": "/run/v.sock"},
    "metadata_service": {"version": "VERSION_V2", "network_interfaces": ["eth0"]},
    "entropy": {},
}


def test_full_spec_maps_every_section():
    s = spec_from_dict(FULL)
    assert (s.machine.vcpus, s.machine.memory_mib) == (2, 256)
    assert s.boot.initrd_path == "/k/initrd"
    d = s.drives[0]
    assert d.cache_type == pb.Drive.CACHE_TYPE_WRITEBACK and d.is_root_device
    assert d.rate_limiter.bandwidth.size == 1048576 and not d.rate_limiter.HasField("ops")
    assert s.network_interfaces[0].mtu == 1500
    assert s.metadata_service.version == pb.MetadataServiceConfig.VERSION_V2
    assert list(s.metadata_service.network_interfaces) == ["eth0"]
    assert s.HasField("entropy") and s.vsock.guest_cid == 3


def test_enum_by_number_full_or_short_name_any_case():
    for v in (2, "CACHE_TYPE_WRITEBACK", "Writeback"):
        s = spec_from_dict({"drives": [{"cache_type": v}]})
        assert s.drives[0].cache_type == pb.Drive.CACHE_TYPE_WRITEBACK
    assert as_states(["running", "VM_STATE_PAUSED", 6]) == [3, 4, 6]


@pytest.mark.parametrize("data, message", [
    ({"machin": {}}, "spec.machin: unknown key (did you mean 'machine'?)"),
    ({"zzz": 1}, "spec.zzz: unknown key; known keys: machine, boot, drives"),
    ({"drives": [{"drive_id": "a"}, {"cache_typ": "unsafe"}]},
     "spec.drives[1].cache_typ: unknown key (did you mean 'cache_type'?)"),
    ({"machine": {"vcpus": "2"}}, "spec.machine.vcpus: must be an integer, got '2'"),
    ({"machine": {"vcpus": True}}, "spec.machine.vcpus: must be an integer, got True"),
    ({"machine": {"vcpus": -1}}, "spec.machine.vcpus: must be between 0 and 4294967295"),
    ({"machine": {"smt": "yes"}}, "spec.machine.smt: must be true or false, got 'yes'"),
    ({"machine": 3}, "spec.machine: must be a mapping, got 3"),
    ({"drives": {"drive_id": "a"}}, "spec.drives: must be a list, got a mapping"),
    ({"drives": [{"cache_type": "fast"}]},
     "spec.drives[0].cache_type: must be one of CACHE_TYPE_UNSAFE, CACHE_TYPE_WRITEBACK, "
     "got 'fast'"),
    ({"boot": {"kernel_path": 7}}, "spec.boot.kernel_path: must be a string, got 7"),
    ({"metadata_service": {"network_interfaces": "eth0"}},
     "spec.metadata_service.network_interfaces: must be a list, got a string"),
])
def test_spec_errors_name_the_field(data, message):
    with pytest.raises(SpecError) as ei:
        spec_from_dict(data)
    assert ei.value.message.startswith(message)
    assert ei.value.code.name == "INVALID_ARGUMENT" and isinstance(ei.value, ValueError)


def test_spec_must_be_a_mapping():
    with pytest.raises(SpecError, match="spec: must be a mapping, got a list"):
        spec_from_dict([])


def test_create_document_or_bare_spec():
    req = create_request_from_dict({"vm_id": "a", "labels": {"app": "web"}, "start": True,
                                    "spec": {"machine": {"vcpus": 1}}})
    assert (req.vm_id, dict(req.labels), req.start, req.spec.machine.vcpus) == \
        ("a", {"app": "web"}, True, 1)
    assert create_request_from_dict({"machine": {"vcpus": 1}}).vm_id == ""
    with pytest.raises(SpecError, match=r"request.machine: unknown key"):
        create_request_from_dict({"vm_id": "a", "machine": {}})
    with pytest.raises(SpecError, match=r"request.labels\['k'\]: must be a string, got 1"):
        create_request_from_dict({"vm_id": "a", "labels": {"k": 1}})


def test_spec_files_yaml_and_json_with_relative_paths(tmp_path):
    (tmp_path / "vm.yaml").write_text(
        "# a VM\nvm_id: y\nspec:\n  machine: {vcpus: 2, memory_mib: 64}\n"
        "  boot:\n    kernel_path: out/vmlinux\n  drives:\n"
        "    - {drive_id: d, path_on_host: ../disk.img}\n")
    s = spec_from_file(str(tmp_path / "vm.yaml"))
    assert s.boot.kernel_path == str(tmp_path / "out" / "vmlinux")
    assert s.drives[0].path_on_host == str(tmp_path.parent / "disk.img")
    (tmp_path / "vm.json").write_text(json.dumps({"boot": {"kernel_path": "/abs/k"}}))
    assert spec_from_file(str(tmp_path / "vm.json")).boot.kernel_path == "/abs/k"


def test_spec_file_errors(tmp_path):
    with pytest.raises(SpecError, match="cannot read .*nope.yaml: No such file"):
        spec_from_file(str(tmp_path / "nope.yaml"))
    (tmp_path / "bad.yaml").write_text("machine: {vcpus: 2\n")
    with pytest.raises(SpecError, match="bad.yaml: invalid YAML: .*line"):
        spec_from_file(str(tmp_path / "bad.yaml"))
    (tmp_path / "bad.json").write_text("{'machine': 1}")
    with pytest.raises(SpecError, match="bad.json: invalid JSON"):
        spec_from_file(str(tmp_path / "bad.json"))


def test_targets_and_escape_keys(monkeypatch):
    monkeypatch.delenv("NODESVC_TARGET", raising=False)
    monkeypatch.setenv("NODESVC_SOCKET", "/run/n.sock")
    assert normalize_target(None) == "unix:///run/n.sock"
    assert normalize_target("/tmp/x.sock") == "unix:///tmp/x.sock"
    assert normalize_target("node7:7443") == "node7:7443"
    monkeypatch.setenv("NODESVC_TARGET", "node8:1")
    assert normalize_target(None) == "node8:1"
    assert (parse_escape("^]"), parse_escape("^a"), parse_escape("~")) == (0x1D, 1, ord("~"))
    with pytest.raises(SpecError, match="--escape"):
        parse_escape("ctrl-x")
