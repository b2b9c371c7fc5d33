"""The hostile device is test-only: installed with every plugin, inert unless the
environment says NODESVC_TEST_PLUGINS=1."""

from __future__ import annotations

from nodesvc.plugins import PluginManager
from nodesvc.vmm import builder


def test_without_the_variable_nothing_is_registered_or_attached(monkeypatch):
    monkeypatch.delenv("NODESVC_TEST_PLUGINS", raising=False)
    defaults = builder.DEFAULT_DEVICES
    pm = PluginManager(load_entry_points=True)
    assert "test_hostile_device" in {p.name for p in pm.plugins()}   # installed...
    assert "test-hostile" not in pm.device_registry()                 # ...and inert
    assert builder.DEFAULT_DEVICES == defaults
    assert all(kind != "test-hostile" for kind, _ in defaults)


def test_with_the_variable_every_vm_gets_it(monkeypatch):
    monkeypatch.setenv("NODESVC_TEST_PLUGINS", "1")
    monkeypatch.setattr(builder, "DEFAULT_DEVICES", builder.DEFAULT_DEVICES)
    assert "test-hostile" in PluginManager().device_registry()
    assert builder.DEFAULT_DEVICES[-1] == ("test-hostile", {})
