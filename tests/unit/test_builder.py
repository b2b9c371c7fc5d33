"""The builder's device plan and the device manager: stable ids, attach order, and the
rules that span devices, all checked before any KVM state exists."""

from __future__ import annotations

import pytest

from nodesvc.plugins import PluginManager
from nodesvc.vmm.builder import BOOT_STEPS, MACHINE_STEPS, STEP_METHODS, Builder
from nodesvc.vmm.device import plan_devices
from nodesvc.vmm.capabilities import Closeable, Console, PowerButton, RateLimited
from nodesvc.vmm.devices import DeviceId, DeviceManager, DeviceNotFound
from nodesvc.vmm.errors import ConfigError


@pytest.fixture(scope="module")
def registry():
    return PluginManager().device_registry()


@pytest.fixture
def disk(tmp_path):
    def make(name):
        p = tmp_path / f"{name}.img"
        p.write_bytes(bytes(4096))
        return str(p)
    return make


def drive(disk, drive_id, root=False):
    return ("virtio-blk", {"drive_id": drive_id, "path_on_host": disk(drive_id),
                           "is_root_device": root, "is_read_only": False})


def test_root_drive_is_planned_first_like_firecracker(registry, disk):
    specs = [("serial", {}), drive(disk, "data"), drive(disk, "rootfs", True),
             drive(disk, "logs")]
    plan = plan_devices(registry, specs)
    assert [(p.kind, p.device_id) for p in plan] == [
        ("serial", "serial"), ("virtio-blk", "rootfs"), ("virtio-blk", "data"),
        ("virtio-blk", "logs")]


def test_two_root_drives_are_refused(registry, disk):
    with pytest.raises(ConfigError) as e:
        plan_devices(registry, [drive(disk, "a", True), drive(disk, "b", True)])
    assert str(e.value) == "drives: only one drive may be the root device, got 'a', 'b'"


def test_two_drives_with_one_id_are_refused(registry, disk):
    with pytest.raises(ConfigError, match="virtio-blk 'x': two devices have this id"):
        plan_devices(registry, [drive(disk, "x"), drive(disk, "x")])


def test_a_bad_device_config_fails_the_plan(registry, disk):
    bad = ("virtio-blk", {"drive_id": "d", "path_on_host": "/nonexistent/disk.img",
                          "is_root_device": False})
    with pytest.raises(ConfigError, match=r"^drives\[d\]\.path_on_host"):
        plan_devices(registry, [bad])


def test_stable_ids_per_kind(registry):
    ids = {k: registry.kind(k).device_id({"iface_id": "eth0"} if k == "virtio-net" else {})
           for k in ("serial", "i8042", "virtio-rng", "vsock", "boot-timer", "virtio-net")}
    assert ids == {"serial": "serial", "i8042": "i8042", "virtio-rng": "entropy",
                   "vsock": "vsock", "boot-timer": "boot-timer", "virtio-net": "eth0"}


def test_a_bare_factory_still_registers_as_a_kind():
    def factory(ctx, config):
        return ("made", config)
    factory.validate = lambda config: None

    from nodesvc.vmm.device import as_device_kind
    dk = as_device_kind("legacy", factory)
    assert dk.device_id({}) == "legacy" and dk.arrange([{"a": 1}]) == [{"a": 1}]
    assert dk.attach(None, {"b": 2}) == ("made", {"b": 2})


class _Uart:
    def __init__(self):
        self.closed = 0

    def console_input(self, data):
        return len(data)

    def close(self):
        self.closed += 1


class _Kbd:
    def send_ctrl_alt_del(self):
        return True


def test_device_manager_lookup_by_id_and_capability():
    m = DeviceManager()
    uart, kbd = _Uart(), _Kbd()
    assert m.add("serial", "serial", uart) == DeviceId("serial", "serial")
    m.add("i8042", "i8042", kbd)
    assert m.get("serial", "serial") is uart
    assert m.find(Console) is uart and m.find(PowerButton) is kbd
    assert m.find(RateLimited) is None
    assert [k for k, _ in m.of(Closeable)] == [DeviceId("serial", "serial")]
    assert ("i8042", "i8042") in m and len(m) == 2
    with pytest.raises(DeviceNotFound, match=r"no virtio-blk device 'root' \(attached: none\)"):
        m.get("virtio-blk", "root")
    with pytest.raises(ConfigError, match="already attached"):
        m.add("serial", "serial", _Uart())
    m.close()
    m.close()
    assert uart.closed == 1 and m.get("serial", "serial") is uart


def test_machine_steps_are_the_boot_steps_without_the_boot():
    assert set(MACHINE_STEPS) < set(BOOT_STEPS)
    assert not {"kernel", "boot-data"} & set(MACHINE_STEPS)
    assert all(hasattr(Builder, STEP_METHODS[s]) for s in BOOT_STEPS)


def test_every_rate_limited_device_takes_the_capability_call(registry, disk, tmp_path):
    """blk, net and rng all implement RateLimited: the VMM updates any of them the same
    way (this is how UpdateRateLimiter(device_id="entropy") reaches the rng device)."""
    from nodesvc_virtio_blk.device import VirtioBlock
    from nodesvc_virtio_blk.config import parse_drive
    from nodesvc_virtio_net.device import VirtioNet
    from nodesvc_virtio_rng.device import VirtioRng
    for cls in (VirtioBlock, VirtioNet, VirtioRng):
        assert issubclass(cls, RateLimited), cls
    built = []
    rng = VirtioRng(limiter_builder=lambda cfg: built.append(cfg) or _Limiter())
    rng.update_rate_limiter({"ops": {"size": 10, "refill_time": 100}})
    assert built == [{"ops": {"size": 10, "refill_time": 100}}] and rng.limiter is not None
    with pytest.raises(ConfigError, match="one rate limiter"):
        rng.update_rate_limiter({"ops": {"size": 1, "refill_time": 1}}, which="rx")
    blk = VirtioBlock(parse_drive(dict(drive(disk, "d")[1])))
    with pytest.raises(ConfigError, match="one rate limiter"):
        blk.update_rate_limiter(None, which="tx")
    blk.close()


class _Limiter:
    def set_wakeup(self, fn):
        pass

    def close(self):
        pass
