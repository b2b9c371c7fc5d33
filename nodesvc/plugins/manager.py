"""Loads plugins from entry points (built-in ones too) and builds the registries."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import pluggy

from ..vmm.errors import ConfigError
from . import hookspecs
from .registry import DeviceRegistry, RateLimiterRegistry

ENTRY_POINT_GROUP = "nodesvc.plugins"
#: Comma-separated entry-point names that must not be loaded.
BLOCK_ENV = "NODESVC_BLOCK_PLUGINS"
#: Plugins every VM needs (the VMM always attaches a serial console and an i8042, as
#: Firecracker does): blocking them would only make every boot fail later, less clearly.
ESSENTIAL = ("serial", "i8042")


class EssentialPluginError(ConfigError):
    """Someone asked to block a plugin no VM can boot without."""


@dataclass(frozen=True)
class PluginInfo:
    name: str           # entry-point name
    distribution: str   # the installed distribution that provides it
    version: str


class PluginManager:
    _shared: PluginManager | None = None
    _shared_lock = threading.Lock()

    def __init__(self, *, load_entry_points: bool = True, blocked: list[str] | None = None):
        if blocked is None:
            blocked = os.environ.get(BLOCK_ENV, "").split(",")
        self.blocked = sorted({b.strip() for b in blocked if b.strip()})
        essential = [b for b in self.blocked if b in ESSENTIAL]
        if essential:
            raise EssentialPluginError(
                f"{BLOCK_ENV}: {', '.join(essential)} cannot be blocked: every VM has a "
                f"serial console and an i8042 controller (plugins {', '.join(ESSENTIAL)})")
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        for name in self.blocked:
            self._pm.set_blocked(name)
        if load_entry_points:
            self._pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
            self._pm.check_pending()

    @classmethod
    def shared(cls) -> PluginManager:
        """The process's manager: entry points are scanned (and plugins imported) once.

        Blocking is read from the environment on that first call."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    @classmethod
    def _forget_shared(cls) -> None:
        """Tests only: the next `shared()` scans entry points again."""
        with cls._shared_lock:
            cls._shared = None

    @property
    def hook(self) -> pluggy.HookRelay:
        return self._pm.hook

    def add_hookcall_monitoring(self, before, after):
        """pluggy's hook-call monitoring (tracing); returns the function that undoes it."""
        return self._pm.add_hookcall_monitoring(before, after)

    def register(self, plugin: object, name: str) -> None:
        """Register an in-process plugin object (tests, embedding)."""
        self._pm.register(plugin, name=name)
        self._pm.check_pending()   # a misspelt hook fails here, naming the plugin

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
        """Run a registration hook through pluggy, one plugin at a time.

        Each call goes through a pluggy hook caller (argument checks, tracing and
        hook-call monitoring apply), narrowed to one plugin so the registry knows who
        registered each kind. The order is pluggy's own (last registered first,
        tryfirst/trylast honoured); wrappers, if any, wrap every plugin's call."""
        hook = getattr(self._pm.hook, hook_name)
        impls = hook.get_hookimpls()
        plain = [i for i in impls if not (i.wrapper or i.hookwrapper)]
        try:
            for impl in reversed(plain):
                others = [i.plugin for i in plain if i is not impl]
                registry.current_plugin = impl.plugin_name
                self._pm.subset_hook_caller(hook_name, remove_plugins=others)(registry=registry)
        finally:
            registry.current_plugin = "?"
        return registry

    def device_registry(self) -> DeviceRegistry:
        return self._fill(DeviceRegistry(), "register_devices")

    def rate_limiter_registry(self) -> RateLimiterRegistry:
        return self._fill(RateLimiterRegistry(), "register_rate_limiters")


def default_manager() -> PluginManager:
    return PluginManager.shared()
