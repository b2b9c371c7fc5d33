"""Plugin glue: registers device kind "virtio-blk" (entry point `virtio_blk`).

Root device and drive letters. Linux names virtio disks vda, vdb, ... in probe
order, i.e. attach order. As in Firecracker, the root drive is attached first (so
it is /dev/vda) and a second root drive is refused, before any KVM state exists:
that is this kind's `arrange`. `root=/dev/vd<letter>` still names the letter the
drive actually gets (counting the virtio-blk devices attached before it), so a VM
built some other way boots too. With `partuuid`, `root=PARTUUID=...` is used.
`ro`/`rw` follows `is_read_only`. Drive ids are the device ids (the builder
refuses two drives with one id).
"""

from __future__ import annotations

from typing import Any, Mapping

from nodesvc.plugins import device_hook
from nodesvc.vmm.device import DeviceKind
from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.ratelimit import parse_limiter_config

from .config import parse_drive, validate
from .device import VirtioBlock

KIND = "virtio-blk"


def disk_name(index: int) -> str:
    """Linux's virtio_blk naming: 0 → vda, 25 → vdz, 26 → vdaa."""
    name = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        name = chr(ord("a") + rem) + name
    return "vd" + name


class VirtioBlkKind(DeviceKind):
    kind, id_key = KIND, "drive_id"
    validate = staticmethod(validate)

    @classmethod
    def arrange(cls, configs):
        roots = [c for c in configs if c.get("is_root_device") is True]
        if len(roots) > 1:
            ids = ", ".join(repr(c.get("drive_id")) for c in roots)
            raise ConfigError(f"drives: only one drive may be the root device, got {ids}")
        return roots + [c for c in configs if c not in roots]

    @classmethod
    def attach(cls, ctx, config: Mapping[str, Any]) -> VirtioBlock:
        """Open the backing file, add the device to the VM, announce the root drive."""
        drive = parse_drive(config)
        limiter = None
        if parse_limiter_config(drive.rate_limiter):
            limiter = ctx.rate_limiter(drive.rate_limiter)
            if limiter is None:
                ctx.log.warning("drive %s: rate_limiter given but no limiter was built",
                                drive.drive_id)
        dev = VirtioBlock(drive, limiter=limiter, limiter_builder=ctx.rate_limiter,
                          event_loop=ctx.event_loop)
        dev.transport = ctx.add_virtio_device(dev, f"virtio-blk:{drive.drive_id}")
        dev.disk_name = disk_name(ctx.attached(KIND))
        if drive.is_root_device:
            root = f"PARTUUID={drive.partuuid}" if drive.partuuid else f"/dev/{dev.disk_name}"
            ctx.cmdline.append(f"root={root} {'ro' if drive.is_read_only else 'rw'}")
        return dev


attach = VirtioBlkKind.attach

register_devices = device_hook(VirtioBlkKind)
