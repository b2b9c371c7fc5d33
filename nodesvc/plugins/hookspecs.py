"""Hook specifications. Few, typed, called while a VM is built — never per exit.

A plugin is a module (registered under the `nodesvc.plugins` entry-point group)
that implements any of these with `@hookimpl`:

    from nodesvc.plugins import hookimpl

    @hookimpl
    def register_devices(registry):
        registry.add("serial", SerialKind)    # a nodesvc.vmm.device.DeviceKind
"""

from __future__ import annotations

import pluggy

from .registry import DeviceRegistry, RateLimiterRegistry

PROJECT = "nodesvc"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_devices(registry: DeviceRegistry) -> None:
    """Register device kinds: `registry.add(kind, DeviceKindSubclass)`.

    The class's classmethods validate each config, give each device its stable id,
    order the kind's devices and attach them, once per VM build (see
    nodesvc.vmm.device.DeviceKind). A bare `factory(ctx, config) -> device` is
    accepted too, with an optional `factory.validate(config)`.
    """


def device_hook(*kinds):
    """The `register_devices` hook of a plugin that only registers DeviceKinds:

        register_devices = device_hook(MyDevKind)
    """
    @hookimpl
    def register_devices(registry: DeviceRegistry) -> None:
        for k in kinds:
            registry.add(k.kind, k)
    return register_devices


@hookspec
def register_rate_limiters(registry: RateLimiterRegistry) -> None:
    """Register rate-limiter kinds: `registry.add(kind, factory)`.

    `factory(config: Mapping, event_loop) -> limiter` builds one limiter that a
    device consults passively (`consume()`), woken by the limiter's timer.
    """
