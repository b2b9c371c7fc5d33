"""Plugin glue: registers device kind "virtio-rng" (entry point `virtio_rng`).

Config is Firecracker's `entropy` object: `{"rate_limiter": {...}}` (optional).
"""

from __future__ import annotations

from typing import Any, Mapping

from nodesvc.plugins import device_hook
from nodesvc.vmm.device import DeviceKind
from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.ratelimit import parse_limiter_config

from .device import VirtioRng

KIND = "virtio-rng"
KEYS = ("rate_limiter",)
DEVICE_ID = "entropy"     # Firecracker's name for it (PATCH /entropy, UpdateRateLimiter)


def validate(config: Mapping[str, Any] | None) -> None:
    """Called by the VMM before any KVM state exists."""
    config = config or {}
    if not isinstance(config, Mapping):
        raise ConfigError(f"entropy: must be an object, got {type(config).__name__}")
    for key in config:
        if key not in KEYS:
            raise ConfigError(f"entropy.{key}: unknown key; allowed: {', '.join(KEYS)}")
    parse_limiter_config(config.get("rate_limiter"), "entropy.rate_limiter")


class VirtioRngKind(DeviceKind):
    kind = KIND
    validate = staticmethod(validate)

    @classmethod
    def device_id(cls, config) -> str:
        return DEVICE_ID

    @classmethod
    def attach(cls, ctx, config: Mapping[str, Any] | None = None) -> VirtioRng:
        config = config or {}
        validate(config)
        limiter = None
        if parse_limiter_config(config.get("rate_limiter")):
            limiter = ctx.rate_limiter(config["rate_limiter"])
            if limiter is None:
                ctx.log.warning("entropy: rate_limiter given but no limiter was built")
        dev = VirtioRng(limiter=limiter, limiter_builder=ctx.rate_limiter,
                        event_loop=ctx.event_loop)
        dev.transport = ctx.add_virtio_device(dev, KIND)
        return dev


attach = VirtioRngKind.attach

register_devices = device_hook(VirtioRngKind)
