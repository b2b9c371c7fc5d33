"""Plugin glue: registers device kind "virtio-net" (entry point `virtio_net`).

One device per `network-interfaces[]` entry. The TAP must be openable by the VMM
(it is created by the node service or the operator, possibly inside `netns`);
as with Firecracker, TUNSETIFF on a name that does not exist makes a transient TAP.
"""

from __future__ import annotations

from typing import Any, Mapping

from nodesvc.net.tap import open_tap
from nodesvc.plugins import device_hook
from nodesvc.vmm.device import DeviceKind
from nodesvc.vmm.errors import ConfigError

from . import config as net_config
from .device import VirtioNet

KIND = "virtio-net"


def validate(config: Mapping[str, Any]) -> None:
    """Refuse a bad interface object before any KVM state exists (one ConfigError line)."""
    net_config.parse(config)


class VirtioNetKind(DeviceKind):
    """One device per interface, id = iface_id."""
    kind, id_key = KIND, "iface_id"
    validate = staticmethod(validate)

    @classmethod
    def attach(cls, ctx, config: Mapping[str, Any]) -> VirtioNet:
        return _attach(ctx, config)


def _attach(ctx, config: Mapping[str, Any]) -> VirtioNet:
    cfg = net_config.parse(config)
    where = f"network-interfaces[{cfg.iface_id}]"
    try:
        tap = open_tap(cfg.host_dev_name, cfg.netns)
    except OSError as e:
        ns = f" in netns {cfg.netns}" if cfg.netns else ""
        raise ConfigError(f"{where}: cannot open TAP {cfg.host_dev_name}{ns}: "
                          f"{e.strerror or e}") from None
    limiters = []
    try:
        for spec in (cfg.rx_rate_limiter, cfg.tx_rate_limiter):
            limiters.append(ctx.rate_limiter(spec) if spec else None)
        # the VMM's MMDS (nodesvc.mmds.vm.VmMmds), if mmds-config lists this interface
        vm_mmds = getattr(ctx, "mmds", None)
        stacks = vm_mmds.stack_factory(cfg.iface_id) if vm_mmds is not None else None
        dev = VirtioNet(tap, ctx.event_loop, name=f"virtio-net:{cfg.iface_id}",
                        mac=cfg.guest_mac, mtu=cfg.mtu, rx_limiter=limiters[0],
                        tx_limiter=limiters[1], limiter_factory=ctx.rate_limiter,
                        mmds_stack=stacks)
    except BaseException:
        for limiter in limiters:
            if limiter is not None:
                limiter.close()
        tap.close()
        raise
    # from here the device owns the TAP and limiters (the builder closes it on failure)
    dev.iface_id, dev.host_dev_name = cfg.iface_id, cfg.host_dev_name
    dev.transport = ctx.add_virtio_device(dev, dev.name)
    return dev


attach = VirtioNetKind.attach

register_devices = device_hook(VirtioNetKind)
