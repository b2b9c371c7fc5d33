"""Plugin glue: registers device kind "virtio-blk" (entry point `virtio_blk`).

Root device and drive letters. Linux names virtio disks vda, vdb, ... in probe
order, i.e. attach order. As in Firecracker, the config loader
(nodesvc.vmm.config) puts the root drive first, so it is /dev/vda, and refuses a
second root drive before any KVM state exists. `root=/dev/vd<letter>` still names
the letter the drive actually gets (counting the virtio-blk devices attached
before it), so a VM built some other way boots too. With `partuuid`,
`root=PARTUUID=...` is used. `ro`/`rw` follows `is_read_only`.

Unique drive_ids are checked at attach from per-VM state kept on the
DeviceContext (validate() sees one drive at a time): still before the VM runs.
"""

from __future__ import annotations

from typing import Any, Mapping

from nodesvc.plugins import hookimpl
from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.ratelimit import parse_limiter_config

from .config import parse_drive, validate
from .device import VirtioBlock

KIND = "virtio-blk"
_STATE = "_nodesvc_virtio_blk"   # attribute on the DeviceContext: this VM's drives so far


def disk_name(index: int) -> str:
    """Linux's virtio_blk naming: 0 → vda, 25 → vdz, 26 → vdaa."""
    name = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        name = chr(ord("a") + rem) + name
    return "vd" + name


def _drives_of(ctx) -> dict:
    state = getattr(ctx, _STATE, None)
    if state is None:
        state = {"ids": [], "root": None}
        setattr(ctx, _STATE, state)
    return state


def attach(ctx, config: Mapping[str, Any]) -> VirtioBlock:
    """Factory: open the backing file, add the device to the VM, announce the root drive."""
    drive = parse_drive(config)
    state = _drives_of(ctx)
    if drive.drive_id in state["ids"]:
        raise ConfigError(f"drives[{drive.drive_id}].drive_id: used by another drive")
    if drive.is_root_device and state["root"] is not None:
        raise ConfigError(f"drives[{drive.drive_id}].is_root_device: drive "
                          f"{state['root']!r} is already the root device")
    limiter = None
    if parse_limiter_config(drive.rate_limiter):
        limiter = ctx.rate_limiter(drive.rate_limiter)
        if limiter is None:
            ctx.log.warning("drive %s: rate_limiter given but no limiter was built",
                            drive.drive_id)
    dev = VirtioBlock(drive, limiter=limiter, limiter_builder=ctx.rate_limiter,
                      event_loop=ctx.event_loop)
    try:
        dev.transport = ctx.add_virtio_device(dev, f"virtio-blk:{drive.drive_id}")
    except BaseException:
        dev.close()
        raise
    dev.disk_name = disk_name(len(state["ids"]))
    state["ids"].append(drive.drive_id)
    if drive.is_root_device:
        state["root"] = drive.drive_id
        root = f"PARTUUID={drive.partuuid}" if drive.partuuid else f"/dev/{dev.disk_name}"
        ctx.cmdline.append(f"root={root} {'ro' if drive.is_read_only else 'rw'}")
    return dev


attach.validate = validate


@hookimpl
def register_devices(registry) -> None:
    registry.add(KIND, attach)
