"""Plugin contract: hooks fill registries, entry points load, blocking works."""

import pluggy
import pytest

from nodesvc.core import nodeinfo
from nodesvc.plugins import PluginManager, RegistryError, hookimpl
from nodesvc.plugins.manager import EssentialPluginError


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
    monkeypatch.setenv("NODESVC_BLOCK_PLUGINS", " vsock, virtio_rng ,")
    pm = PluginManager(load_entry_points=False)
    assert pm.blocked == ["virtio_rng", "vsock"]


@pytest.mark.parametrize("blocked", [["serial"], ["i8042"], ["vsock", "serial", "i8042"]])
def test_blocking_an_essential_plugin_is_refused(blocked):
    with pytest.raises(EssentialPluginError) as e:
        PluginManager(blocked=blocked)
    msg = str(e.value)
    assert msg.startswith("NODESVC_BLOCK_PLUGINS: ")
    for name in blocked:
        assert (name in msg.split(" cannot")[0]) == (name in ("serial", "i8042"))
    assert "cannot be blocked" in msg


def test_blocking_an_essential_plugin_through_the_env_is_refused(monkeypatch):
    monkeypatch.setenv("NODESVC_BLOCK_PLUGINS", "i8042")
    with pytest.raises(EssentialPluginError, match="i8042 cannot be blocked"):
        PluginManager(load_entry_points=False)


def test_hooks_run_through_pluggys_hook_caller_with_attribution():
    """Tracing/monitoring sees every registration call, and each kind names its plugin."""
    pm = PluginManager(load_entry_points=False)

    class First:
        @hookimpl
        def register_devices(self, registry):
            registry.add("first-a", object)
            registry.add("first-b", object)

    class Second:
        @hookimpl(tryfirst=True)
        def register_devices(self, registry):
            registry.add("second", object)

    pm.register(First(), "first")
    pm.register(Second(), "second")
    calls = []
    undo = pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: calls.append((name, [i.plugin_name for i in impls],
                                                  type(kwargs["registry"]).__name__)),
        lambda outcome, name, impls, kwargs: outcome.get_result())
    try:
        reg = pm.device_registry()
    finally:
        undo()
    assert {r.kind: r.plugin for r in reg.registrations()} == {
        "first-a": "first", "first-b": "first", "second": "second"}
    # pluggy's order (tryfirst first), one monitored call per implementing plugin
    assert calls == [("register_devices", ["second"], "DeviceRegistry"),
                     ("register_devices", ["first"], "DeviceRegistry")]
    assert reg.current_plugin == "?"


def test_hook_argument_errors_come_from_pluggy():
    pm = PluginManager(load_entry_points=False)
    pm.register(VendorDevices(), "vendor")
    with pytest.raises(TypeError):      # pluggy's hook caller takes keyword arguments only
        pm.hook.register_devices(object())


def test_misspelt_hook_is_refused_by_check_pending():
    class Typo:
        @hookimpl
        def register_device(self, registry):   # not a hook
            pass

    pm = PluginManager(load_entry_points=False)
    with pytest.raises(pluggy.PluginValidationError, match="register_device"):
        pm.register(Typo(), "typo")


def test_entry_points_are_scanned_once_per_process(monkeypatch):
    scans = []
    real = pluggy.PluginManager.load_setuptools_entrypoints

    def counting(self, group, name=None):
        scans.append(group)
        return real(self, group, name)

    monkeypatch.setattr(pluggy.PluginManager, "load_setuptools_entrypoints", counting)
    PluginManager._forget_shared()
    try:
        first = nodeinfo.plugins()          # GetNodeInfo, twice
        assert nodeinfo.plugins() == first
        assert PluginManager.shared() is PluginManager.shared()
        assert "serial" in PluginManager.shared().device_registry()
        assert scans == ["nodesvc.plugins"]
    finally:
        PluginManager._forget_shared()


def test_builtin_plugins_load_through_entry_points():
    pm = PluginManager()
    names = {p.name: p for p in pm.plugins()}
    if "serial" not in names:
        pytest.fail("the serial plugin distribution is not installed (run `make setup`)")
    assert names["serial"].distribution == "nodesvc-serial"
    assert names["serial"].version
    assert {"serial", "i8042"} <= set(pm.device_registry().kinds())
    blocked = PluginManager(blocked=["vsock"])
    assert "vsock" not in blocked.device_registry()
    assert {"serial", "i8042"} <= set(blocked.device_registry().kinds())
