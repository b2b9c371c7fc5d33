"""The plugin contract: hookspecs, registries and the manager that loads entry points."""

from .hookspecs import device_hook, hookimpl, hookspec, PROJECT
from .registry import DeviceRegistry, RateLimiterRegistry, RegistryError
from .manager import (PluginManager, PluginInfo, ENTRY_POINT_GROUP, BLOCK_ENV, ESSENTIAL,
                      EssentialPluginError, default_manager)

__all__ = [
    "device_hook", "hookimpl", "hookspec", "PROJECT", "DeviceRegistry", "RateLimiterRegistry",
    "RegistryError", "PluginManager", "PluginInfo", "ENTRY_POINT_GROUP", "BLOCK_ENV",
    "ESSENTIAL", "EssentialPluginError", "default_manager",
]
