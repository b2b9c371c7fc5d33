"""What a device plugin registers (a `DeviceKind`), what it receives while a VM is
being built (a `DeviceContext`), and what it returns (the device).

Device lifecycle: before any KVM state exists the builder calls the kind's
`validate(config)` for every device, `device_id(config)` for its stable id and
`arrange(configs)` once for all devices of the kind (cross-device rules, attach
order). Then `attach(ctx, config)` runs once per device: it inserts itself on a
bus, asks for IRQ lines, may append to the kernel command line, and returns the
device object. From then on it is driven only by bus accesses (vCPU threads)
and event-loop callbacks; it must never block either. What else the VMM may ask
of a device is declared by implementing a capability Protocol
(nodesvc.vmm.capabilities: Console, PowerButton, Drive, RateLimited, BootClock,
Closeable); all of those are called outside hot paths.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from .bus import Bus
from .errors import ConfigError
from .exits import VmExit


class IrqLine(Protocol):
    gsi: int

    def trigger(self) -> None:
        """Raise an edge on the line (safe from any thread)."""


class OutputSink(Protocol):
    def write(self, data: bytes) -> None:
        """Accept console output. Must never block; may drop (and count) when full."""


@dataclass
class DeviceContext:
    vm_id: str
    memory: Any                      # nodesvc.vmm.memory.GuestMemory
    pio_bus: Bus
    mmio_bus: Bus
    event_loop: Any                  # nodesvc.vmm.eventloop.EventLoop
    irq_line: Callable[[int], IrqLine]
    console_out: OutputSink
    request_exit: Callable[[VmExit], None]
    cmdline: list[str] = field(default_factory=list)
    #: `rate_limiter(config) -> limiter | None`: builds a limiter of the kind named by
    #: `config["kind"]` (default "token-bucket") from the loaded limiter plugins.
    rate_limiter: Callable[[Mapping[str, Any] | None], Any] = lambda config: None
    #: `add_virtio_device(device, name) -> VirtioMmioTransport`: gives a virtio device its
    #: 4 KiB MMIO window and IRQ, and announces it on the kernel command line.
    add_virtio_device: Callable[..., Any] | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("nodesvc.vmm.device"))
    #: the VM's DeviceManager (devices attached so far)
    devices: Any = None
    #: the VMM's metadata service (nodesvc.mmds.vm.VmMmds): net devices serve it
    mmds: Any = None

    def attached(self, kind: str) -> int:
        """How many devices of `kind` were attached before this one."""
        return 0 if self.devices is None else sum(1 for k in self.devices.ids() if k.kind == kind)


DeviceFactory = Callable[[DeviceContext, Mapping[str, Any]], Any]


class DeviceKind:
    """What a plugin registers for one device kind: `registry.add(Kind.kind, Kind)`.

    Every method is a classmethod with a default, so a kind implements only `attach`
    and what its configuration needs. All but `attach` run before any KVM state exists
    and must raise `ConfigError` (one line naming the key) on bad input.
    """
    kind: str = ""
    #: the config key holding the device's id (drive_id, iface_id); None: one per VM
    id_key: str | None = None

    @classmethod
    def validate(cls, config: Mapping[str, Any]) -> None:
        """Refuse a bad config for one device."""

    @classmethod
    def device_id(cls, config: Mapping[str, Any]) -> str:
        """The device's stable id within its kind: `config[id_key]`, else the kind."""
        return config[cls.id_key] if cls.id_key else cls.kind

    @classmethod
    def arrange(cls, configs: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """All configs of this kind at once, in config order: check rules that span
        devices and return them in the order to attach them."""
        return configs

    @classmethod
    def attach(cls, ctx: DeviceContext, config: Mapping[str, Any]) -> Any:
        raise NotImplementedError(f"device kind {cls.kind!r} has no attach")


class FactoryKind(DeviceKind):
    """A bare `factory(ctx, config)` registered the old way (with an optional
    `factory.validate`), seen as a DeviceKind."""

    def __init__(self, kind: str, factory: DeviceFactory):
        self.kind, self._factory = kind, factory
        validate = getattr(factory, "validate", None)
        if validate is not None:
            self.validate = validate

    def device_id(self, config) -> str:    # one per VM, named by the kind
        return self.kind

    def attach(self, ctx, config):
        return self._factory(ctx, config)


def as_device_kind(kind: str, registered: Any) -> DeviceKind | type[DeviceKind]:
    """The DeviceKind behind whatever was registered for `kind`."""
    if isinstance(registered, type) and issubclass(registered, DeviceKind):
        return registered
    return FactoryKind(kind, registered)


@dataclass(frozen=True)
class PlannedDevice:
    kind: str
    device_id: str
    config: Mapping[str, Any]
    device_kind: Any            # the DeviceKind that validated it and will attach it


def plan_devices(registry, specs) -> list[PlannedDevice]:
    """Validate every device config and fix the attach order; raises ConfigError (or
    the registry's error for an unknown kind) before any KVM state exists."""
    by_kind: dict[str, list[Mapping[str, Any]]] = {}
    kinds: dict[str, Any] = {}
    for kind, cfg in specs:
        if kind not in kinds:
            kinds[kind] = registry.kind(kind)
        kinds[kind].validate(cfg)
        by_kind.setdefault(kind, []).append(cfg)
    plan: list[PlannedDevice] = []
    seen: set[tuple[str, str]] = set()
    for kind, configs in by_kind.items():     # kinds in order of first appearance
        dk = kinds[kind]
        for cfg in dk.arrange(list(configs)):
            did = dk.device_id(cfg)
            if (kind, did) in seen:
                raise ConfigError(f"{kind} {did!r}: two devices have this id")
            seen.add((kind, did))
            plan.append(PlannedDevice(kind, did, cfg, dk))
    return plan
