"""One VMM's MMDS: the store every listed interface serves, and their stacks' making.

    vm_mmds = VmMmds(cfg.mmds, vm_id)        # MicroVm does this, when it is constructed
    vm_mmds.mmds.put(doc)                    # PutMetadata (any thread: Mmds has a lock)
    make = vm_mmds.stack_factory("eth0")     # None: the interface does not serve MMDS
    stack = make()                           # a fresh MmdsStack (net device activation)

The `Mmds` (document, tokens) belongs to the VMM and outlives devices; a device builds a
new stack from `make()` whenever the driver starts it, so a reset forgets connections
but not the document. All randomness is drawn here, once: the token key (inside `Mmds`)
and the secret the stacks' TCP initial sequence numbers derive from. A jailed VMM
constructs its MicroVm before entering the jail, so neither a device activation (a vCPU
thread) nor the event loop ever needs getrandom.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from . import tcp
from .config import MmdsConfig
from .service import V1, Mmds
from .stack import MmdsStack


class VmMmds:
    def __init__(self, config: MmdsConfig | None, vm_id: str = "", *,
                 clock: Callable[[], float] = time.monotonic,
                 urandom: Callable[[int], bytes] = os.urandom):
        self.config = config
        self.mmds = Mmds(version=config.version if config else V1, instance_id=vm_id,
                         imds_compat=bool(config and config.imds_compat), clock=clock)
        # one generator for every interface and every reset: ISNs never repeat in a VMM
        self._isn = tcp.isn_generator(urandom(32))
        self.clock = clock

    def serves(self, iface_id: str) -> bool:
        return self.config is not None and iface_id in self.config.network_interfaces

    def stack_factory(self, iface_id: str) -> Callable[[], MmdsStack] | None:
        """What the net device of `iface_id` builds its stacks with; None if not listed."""
        if not self.serves(iface_id):
            return None
        ip = self.config.ipv4_address

        def make() -> MmdsStack:
            return MmdsStack(self.mmds, ip=ip, clock=self.clock, isn=self._isn)
        return make


def for_config(vm_config, vm_id: str) -> VmMmds:
    """The VmMmds of a VmConfig (its `mmds` is the parsed mmds-config section, or None:
    the store still takes PutMetadata, no interface answers)."""
    return VmMmds(getattr(vm_config, "mmds", None), vm_id)
