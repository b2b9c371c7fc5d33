"""Firecracker 1.16 `--config-file` drop-in: every key of its schema is accepted while it
holds its "absent" value (as Firecracker's tooling writes configs), and a real value of
a feature this version lacks is one line naming the key and saying it is not supported.

The key list below is Firecracker 1.16's `VmmConfig` (src/vmm/src/resources.rs and
vmm_config/*.rs, the swagger definitions): written out here so the test notices when
the parser and the schema drift apart.
"""

from __future__ import annotations

import json
import socket
import struct

import pytest

from nodesvc.plugins import PluginManager
from nodesvc.vmm.config import is_absent, load_config_file, parse_config
from nodesvc.vmm.device import plan_devices
from nodesvc.vmm.errors import ConfigError

HOST = 4 << 30  # pretend the host has 4 GiB


def fake_elf() -> bytes:
    """A plausible x86_64 ELF64 executable header: enough for the kernel-format check."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    return ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, 0, 0, 0,
                               64, 56, 0, 64, 0, 0)

BUCKET = ("size", "one_time_burst", "refill_time")
LIMITER = {"bandwidth": BUCKET, "ops": BUCKET}
SCHEMA: dict[str, tuple | dict] = {
    "boot-source": ("kernel_image_path", "initrd_path", "boot_args"),
    "machine-config": ("vcpu_count", "mem_size_mib", "smt", "cpu_template",
                       "track_dirty_pages", "huge_pages", "gdb_socket_path"),
    "drives[]": {"drive_id": None, "partuuid": None, "is_root_device": None,
                 "cache_type": None, "is_read_only": None, "path_on_host": None,
                 "rate_limiter": LIMITER, "io_engine": None, "socket": None},
    "network-interfaces[]": {"iface_id": None, "host_dev_name": None, "guest_mac": None,
                             "mtu": None, "rx_rate_limiter": LIMITER,
                             "tx_rate_limiter": LIMITER},
    "vsock": ("vsock_id", "guest_cid", "uds_path"),
    "entropy": {"rate_limiter": LIMITER},
    "balloon": ("amount_mib", "deflate_on_oom", "stats_polling_interval_s",
                "free_page_hinting", "free_page_reporting"),
    "logger": ("log_path", "level", "show_level", "show_log_origin", "module"),
    "metrics": ("metrics_path",),
    "mmds-config": None,
    "cpu-config": ("kvm_capabilities", "cpuid_modifiers", "msr_modifiers", "reg_modifiers",
                   "vcpu_features"),
    "pmem[]": None,
    "memory-hotplug": ("total_size_mib", "block_size_mib", "slot_size_mib"),
}

LIMITER_ABSENT = {"bandwidth": None, "ops": {"size": 0, "one_time_burst": None,
                                              "refill_time": 0}}


@pytest.fixture
def full(tmp_path) -> dict:
    """A config carrying every key of the schema: real values for what we implement,
    the absent value for every feature we lack."""
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(fake_elf())
    disk = tmp_path / "rootfs.ext4"
    disk.write_bytes(bytes(1 << 16))
    return {
        "boot-source": {"kernel_image_path": str(kernel), "initrd_path": None,
                        "boot_args": "console=ttyS0 reboot=k panic=1"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 128, "smt": False,
                           "cpu_template": "None", "track_dirty_pages": False,
                           "huge_pages": "None", "gdb_socket_path": None},
        "drives": [{"drive_id": "rootfs", "partuuid": None, "is_root_device": True,
                    "cache_type": "Unsafe", "is_read_only": False,
                    "path_on_host": str(disk), "rate_limiter": LIMITER_ABSENT,
                    "io_engine": "Sync", "socket": None}],
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0",
                                "guest_mac": None, "mtu": None, "rx_rate_limiter": None,
                                "tx_rate_limiter": LIMITER_ABSENT}],
        "vsock": {"vsock_id": None, "guest_cid": 3, "uds_path": str(tmp_path / "v.sock")},
        "entropy": {"rate_limiter": None},
        "balloon": None,
        "logger": {"log_path": None, "level": None, "show_level": False,
                   "show_log_origin": False, "module": None},
        "metrics": None,
        "mmds-config": None,
        "cpu-config": {"kvm_capabilities": [], "cpuid_modifiers": [], "msr_modifiers": [],
                       "reg_modifiers": [], "vcpu_features": []},
        "pmem": [],
        "memory-hotplug": None,
    }


def _keys_of(section: str, full: dict) -> set[str]:
    v = full[section.rstrip("[]")]
    v = v[0] if isinstance(v, list) and v else v
    return set(v) if isinstance(v, dict) else set()


def _accept(obj: dict) -> list:
    """The VMM's whole pre-KVM check: the config parser, then every device kind's own."""
    cfg = parse_config(obj, host_mem_bytes=HOST)
    return plan_devices(PluginManager().device_registry(),
                        [(d.kind, d.config) for d in cfg.devices])


def _refusal(obj: dict) -> str:
    with pytest.raises(ConfigError) as e:
        _accept(obj)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_the_config_carries_every_key_of_the_schema(full):
    assert {s.rstrip("[]") for s in SCHEMA} == set(full)
    for section, keys in SCHEMA.items():
        if isinstance(keys, (tuple, dict)) and _keys_of(section, full):
            assert _keys_of(section, full) == set(keys), section
    # the sections whose features we lack carry every key too, once given as objects
    for section in ("balloon", "metrics", "memory-hotplug"):
        obj = {**full, section: dict.fromkeys(SCHEMA[section])}
        _accept(obj)


def test_every_absent_value_is_accepted(full, tmp_path):
    plan = _accept(full)
    assert [(p.kind, p.device_id) for p in plan] == [
        ("virtio-blk", "rootfs"), ("virtio-net", "eth0"), ("vsock", "vsock"),
        ("virtio-rng", "entropy")]
    # and through the file loader, as `nodesvc-vmm --config-file` reads it
    path = tmp_path / "vm.json"
    path.write_text(json.dumps(full, indent=2))
    assert load_config_file(str(path), host_mem_bytes=HOST).machine_config.vcpu_count == 2


@pytest.mark.parametrize("where, value, key, feature", [
    ("drives.0.socket", "/run/vhost-user-blk.sock", "drives[rootfs].socket",
     "a vhost-user block device"),
    ("drives.0.io_engine", "Async", "drives[rootfs].io_engine", "the io_uring engine"),
    ("machine-config.smt", True, "machine-config.smt", "smt"),
    ("machine-config.track_dirty_pages", True, "machine-config.track_dirty_pages",
     "dirty page tracking"),
    ("machine-config.huge_pages", "2M", "machine-config.huge_pages", "hugetlbfs"),
    ("machine-config.gdb_socket_path", "/tmp/gdb.sock", "machine-config.gdb_socket_path",
     "GDB stub"),
    ("balloon", {"amount_mib": 64, "deflate_on_oom": False}, "balloon.amount_mib",
     "a balloon device"),
    ("logger", {"log_path": "/tmp/fc.log", "level": "Info"}, "logger.log_path",
     "Firecracker's logger"),
    ("logger", {"show_level": True}, "logger.show_level", "Firecracker's logger"),
    ("metrics", {"metrics_path": "/tmp/fc.metrics"}, "metrics.metrics_path", "metrics file"),
    ("cpu-config", {"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                                         "modifiers": []}]},
     "cpu-config.cpuid_modifiers", "a custom CPU template"),
    ("cpu-config", "/etc/fc/template.json", "cpu-config", "a custom CPU template"),
    ("memory-hotplug", {"total_size_mib": 1024}, "memory-hotplug.total_size_mib",
     "memory hot-plug"),
])
def test_a_feature_we_lack_is_one_line_naming_the_key(full, where, value, key, feature):
    obj = json.loads(json.dumps(full))
    *parents, leaf = where.split(".")
    node = obj
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    node[leaf] = value
    msg = _refusal(obj)
    assert msg.startswith(f"{key}: ")
    assert feature in msg and "not supported" in msg


def test_unknown_keys_are_still_refused(full):
    obj = {**full, "logger": {"log_path": None, "colour": None}}
    assert _refusal(obj).startswith("logger.colour: unknown key; allowed: log_path, level")
    obj = json.loads(json.dumps(full))
    obj["drives"][0]["sockets"] = None
    assert _refusal(obj).startswith("drives[rootfs].sockets: unknown key")


def test_what_counts_as_absent():
    for v in (None, False, [], "None", {}, {"a": None, "b": [], "c": {"d": False}}):
        assert is_absent(v), v
    for v in (0, True, "", "none", [None], {"a": 0}):
        assert not is_absent(v), v


def test_vsock_listener_path_is_not_created(full, tmp_path):
    # accepting a config never touches the host beyond reading it
    _accept(full)
    assert not (tmp_path / "v.sock").exists()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "v.sock"))   # an existing socket is fine too
        _accept(full)
