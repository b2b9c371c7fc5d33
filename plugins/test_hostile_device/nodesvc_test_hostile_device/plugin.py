"""TEST ONLY plugin glue: device kind "test-hostile", attached to every VM — but only in a
process whose environment has NODESVC_TEST_PLUGINS=1.

Without that variable the hook registers nothing and changes nothing, so installing the
distribution (the Makefile installs every plugins/*) leaves a production node as it was.
With it, the kind is registered and appended to the VMM's default devices (the ones every
VM gets, like the serial port), since no VM config section can name a test device. The
default list is extended only where the VMM's builder is already loaded (a VMM process or
the zygote), never in the node service, which only validates specs.
"""

from __future__ import annotations

import logging
import os
import sys

from nodesvc.plugins import hookimpl
from nodesvc.vmm.device import DeviceKind

from .device import PORT, HostileDevice, targets_from_env

KIND = "test-hostile"
ENABLE_ENV = "NODESVC_TEST_PLUGINS"
log = logging.getLogger("nodesvc.test_hostile_device")


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV) == "1"


class HostileKind(DeviceKind):
    kind = KIND

    @classmethod
    def attach(cls, ctx, config=None) -> HostileDevice:
        dev = HostileDevice(ctx, targets_from_env())
        ctx.pio_bus.insert(PORT, 1, dev)
        ctx.log.warning("TEST-ONLY hostile device attached at port %#x", PORT)
        return dev


def _attach_to_every_vm() -> None:
    builder = sys.modules.get("nodesvc.vmm.builder")
    if builder is not None and all(k != KIND for k, _ in builder.DEFAULT_DEVICES):
        builder.DEFAULT_DEVICES = (*builder.DEFAULT_DEVICES, (KIND, {}))


@hookimpl
def register_devices(registry) -> None:
    if not enabled():
        return
    registry.add(KIND, HostileKind)
    _attach_to_every_vm()
