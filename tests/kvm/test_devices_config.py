"""Firecracker-format device sections build real devices on a real VM."""

import json

import pytest

from nodesvc.testing.jailed import JailedVm
from nodesvc.vmm.config import load_config_file
from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.exits import ExitReason
from nodesvc.vmm.vm import MicroVm

pytestmark = pytest.mark.kvm


def _config(tmp_path, kernel, **sections):
    cfg = {"boot-source": {"kernel_image_path": str(kernel), "boot_args": "console=ttyS0"},
           "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}, **sections}
    path = tmp_path / "vm.json"
    path.write_text(json.dumps(cfg))
    return load_config_file(str(path))


def test_drives_vsock_and_entropy_are_announced_to_the_guest(tmp_path, tiny_guest, jail_base):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    cfg = _config(tmp_path, tiny_guest("bootinfo"),
                  drives=[{"drive_id": "rootfs", "path_on_host": str(disk),
                           "is_root_device": True, "is_read_only": False,
                           "rate_limiter": {"bandwidth": {"size": 1 << 20, "refill_time": 100}}}],
                  vsock={"guest_cid": 3, "uds_path": str(tmp_path / "v.sock")},
                  entropy={"rate_limiter": {"ops": {"size": 10, "refill_time": 100}}})
    vm = JailedVm(cfg, jail_base=jail_base)     # jailed, as the node runs it
    sink = vm.sink
    result = vm.run(timeout=20)
    assert result.reason is ExitReason.GUEST_RESET, result
    line = next(x for x in sink.text().splitlines() if x.startswith("CMDLINE "))
    # one 4 KiB window and IRQ per virtio device, in attach order, as the guest read it
    assert "virtio_mmio.device=4K@0xd0000000:5" in line
    assert "virtio_mmio.device=4K@0xd0001000:6" in line
    assert "virtio_mmio.device=4K@0xd0002000:7" in line
    assert "root=/dev/vda" in line


def test_bad_device_config_is_refused_before_kvm(tmp_path, tiny_guest):
    cfg = _config(tmp_path, tiny_guest("hello"),
                  drives=[{"drive_id": "d", "path_on_host": str(tmp_path / "missing.img"),
                           "is_root_device": False}])
    vm = MicroVm(cfg)
    with pytest.raises(ConfigError, match="path_on_host"):
        vm.build()
    assert vm.kvm is None  # nothing was created
