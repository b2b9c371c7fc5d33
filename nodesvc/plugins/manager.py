"""Loads plugins from entry points (built-in ones too) and builds the registries."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata

import pluggy

from . import hookspecs
from .registry import DeviceRegistry, RateLimiterRegistry

ENTRY_POINT_GROUP = "nodesvc.plugins"
#: Comma-separated entry-point names that must not be loaded.
BLOCK_ENV = "NODESVC_BLOCK_PLUGINS"


@dataclass(frozen=True)
class PluginInfo:
    name: str           # entry-point name
    distribution: str   # the installed distribution that provides it
    version: str


class PluginManager:
    def __init__(self, *, load_entry_points: bool = True, blocked: list[str] | None = None):
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        if blocked is None:
            blocked = [b.strip() for b in os.environ.get(BLOCK_ENV, "").split(",")]
        self.blocked = sorted({b for b in blocked if b})
        for name in self.blocked:
            self._pm.set_blocked(name)
        if load_entry_points:
            self._pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)

    def register(self, plugin: object, name: str) -> None:
        """Register an in-process plugin object (tests, embedding)."""
        self._pm.register(plugin, name=name)

    def plugins(self) -> list[PluginInfo]:
        dists = {self._pm.get_name(p): d for p, d in self._pm.list_plugin_distinfo()}
        out = []
        for plugin in self._pm.get_plugins():
            name = self._pm.get_name(plugin)
            dist = dists.get(name)
            if dist is not None:
                out.append(PluginInfo(name, dist.metadata["name"], dist.version))
            else:
                out.append(PluginInfo(name, "(in-process)", ""))
        return sorted(out, key=lambda p: p.name)

    def _fill(self, registry, hook_name: str):
        # Call each implementation separately so the registry can attribute kinds.
        for impl in reversed(getattr(self._pm.hook, hook_name).get_hookimpls()):
            registry.current_plugin = impl.plugin_name
            impl.function(registry=registry)
        registry.current_plugin = "?"
        return registry

    def device_registry(self) -> DeviceRegistry:
        return self._fill(DeviceRegistry(), "register_devices")

    def rate_limiter_registry(self) -> RateLimiterRegistry:
        return self._fill(RateLimiterRegistry(), "register_rate_limiters")


def installed_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""
