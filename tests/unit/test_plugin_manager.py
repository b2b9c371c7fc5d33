"""Plugin contract: hooks fill registries, entry points load, blocking works."""

import pytest

from nodesvc.plugins import PluginManager, RegistryError, hookimpl


class VendorDevices:
    @hookimpl
    def register_devices(self, registry):
        registry.add("vendor-dev", lambda ctx, cfg: ("vendor", cfg))


class VendorLimiter:
    @hookimpl
    def register_rate_limiters(self, registry):
        registry.add("leaky-bucket", lambda cfg, loop: "limiter")


def test_in_process_plugin_registers_device_and_limiter():
    pm = PluginManager(load_entry_points=False)
    pm.register(VendorDevices(), "vendor")
    pm.register(VendorLimiter(), "vendor-limiter")
    devices = pm.device_registry()
    assert devices.get("vendor-dev")(None, {"a": 1}) == ("vendor", {"a": 1})
    assert devices.registrations()[0].plugin == "vendor"
    assert pm.rate_limiter_registry().kinds() == ["leaky-bucket"]
    assert {p.name for p in pm.plugins()} == {"vendor", "vendor-limiter"}


def test_duplicate_kind_names_both_plugins():
    pm = PluginManager(load_entry_points=False)
    pm.register(VendorDevices(), "one")

    class Again(VendorDevices):
        pass

    pm.register(Again(), "two")
    with pytest.raises(RegistryError, match="registered twice"):
        pm.device_registry()


def test_unknown_kind_lists_known_ones():
    pm = PluginManager(load_entry_points=False)
    pm.register(VendorDevices(), "vendor")
    with pytest.raises(RegistryError, match=r"no loaded plugin provides device kind 'nope' \(known: vendor-dev\)"):
        pm.device_registry().get("nope")


def test_blocked_in_process_plugin_is_not_registered():
    pm = PluginManager(load_entry_points=False, blocked=["vendor"])
    pm.register(VendorDevices(), "vendor")
    assert "vendor-dev" not in pm.device_registry()
    assert pm.blocked == ["vendor"]


def test_block_env_var(monkeypatch):
    monkeypatch.setenv("NODESVC_BLOCK_PLUGINS", " serial, i8042 ,")
    pm = PluginManager(load_entry_points=False)
    assert pm.blocked == ["i8042", "serial"]


def test_builtin_plugins_load_through_entry_points():
    pm = PluginManager()
    names = {p.name: p for p in pm.plugins()}
    if "serial" not in names:
        pytest.fail("the serial plugin distribution is not installed (run `make setup`)")
    assert names["serial"].distribution == "nodesvc-serial"
    assert names["serial"].version
    assert {"serial", "i8042"} <= set(pm.device_registry().kinds())
    blocked = PluginManager(blocked=["serial"])
    assert "serial" not in blocked.device_registry()
    assert "i8042" in blocked.device_registry()
