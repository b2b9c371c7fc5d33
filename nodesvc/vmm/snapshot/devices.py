"""Device and virtio-mmio transport state, by the device manager's stable `(kind, id)`.

A device that has state to keep implements `Snapshottable` (`save_state() -> dict`,
JSON-able; `restore_state(dict)`); a virtio device may also have `check_state(dict)`,
called before anything runs, to refuse state it cannot take (a drive of another size).
Saving runs on the event-loop thread, with that thread held until the memory file is
written (see nodesvc.vmm.snapshot.save), so no device work changes guest memory or device
state in between. Restoring a virtio device: the transport's registers and queues go back
first, then — on the event-loop thread, as every activation does — the device is
activated on its restored queues and given its own state, and every ready queue is kicked
once (Firecracker's resume kicks all virtio devices).
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from ..virtio.queue import VirtqueueError
from .format import SnapshotError, SnapshotMismatch

log = logging.getLogger("nodesvc.vmm.snapshot")


@runtime_checkable
class Snapshottable(Protocol):
    def save_state(self) -> dict:
        """The device's own state (not its transport's), JSON-able."""

    def restore_state(self, state: dict) -> None:
        """Put saved state back into a device built from the same config (virtio devices:
        after their activation on the restored queues, on the event-loop thread)."""


@runtime_checkable
class TransportReset(Protocol):
    def transport_reset(self) -> None:
        """After a restore: the host ends of connections are gone (vsock)."""


def limiter_state(limiter) -> dict | None:
    """A device's rate limiter's own state (token buckets), if its kind keeps any."""
    return limiter.save_state() if isinstance(limiter, Snapshottable) else None


def restore_limiter(limiter, state: dict | None) -> None:
    """Into the limiter the restored device was built with (from the snapshot's config)."""
    if state is not None and isinstance(limiter, Snapshottable):
        limiter.restore_state(state)


# -- virtio-mmio transport ----------------------------------------------------------------

_REGS = ("status", "device_features_sel", "driver_features_sel", "driver_features",
         "queue_sel", "interrupt_status", "config_generation")


def save_transport(tr) -> dict:
    with tr._lock:
        s = {k: getattr(tr, k) for k in _REGS}
        s.update(base=tr.base, active=tr.active, failure=tr.failure,
                 offered=tr.offered, acked_features=tr.device.acked_features,
                 queues=[q.save_state() for q in tr.queues])
    return s


def restore_transport(tr, s: dict) -> bool:
    """Registers and queues back into a fresh transport; True if the device must be
    activated (then call `activate_restored` on the event-loop thread)."""
    name = tr.name
    if s["base"] != tr.base:
        raise SnapshotMismatch(f"{name}: saved at MMIO {s['base']:#x}, rebuilt at {tr.base:#x} "
                               "(the device list differs from the snapshot's)")
    if len(s["queues"]) != len(tr.queues):
        raise SnapshotMismatch(f"{name}: saved with {len(s['queues'])} queues, "
                               f"the device has {len(tr.queues)}")
    if s["driver_features"] & ~tr.offered:
        raise SnapshotMismatch(f"{name}: the driver acked features {s['driver_features']:#x} "
                               f"this device does not offer ({tr.offered:#x})")
    active = bool(s["active"]) and not s["failure"]
    with tr._lock:
        for k in _REGS:
            setattr(tr, k, s[k])
        tr.failure = s["failure"]
        for q, qs in zip(tr.queues, s["queues"]):
            q.restore_state(qs, tr.memory if active else None)
        tr.active = active
    if active:
        tr.device.acked_features = s["acked_features"]
    return active


def activate_restored(tr, dev_state: dict | None) -> None:
    """Event-loop thread: activate the device on its restored queues, put its own state
    back, then kick every ready queue (work the guest posted before the snapshot)."""
    from ..virtio.mmio import _Interrupt
    dev = tr.device
    dev.activate(tr.queues, _Interrupt(tr))
    if dev_state is not None and isinstance(dev, Snapshottable):
        dev.restore_state(dev_state)
    tr.live = True     # the transport's "the device has run activate()"
    for i, q in enumerate(tr.queues):
        if q.ready:
            tr.process_notify(i)


# -- every device of a VM -----------------------------------------------------------------

def save_devices(vm) -> list[dict]:
    transports = {id(t.device): t for t in vm.transports}
    out = []
    for key, dev in vm.devices:
        entry: dict = {"kind": key.kind, "id": key.id}
        tr = transports.get(id(dev))
        if tr is not None:
            entry["transport"] = save_transport(tr)
        if isinstance(dev, Snapshottable):
            entry["state"] = dev.save_state()
        out.append(entry)
    return out


def restore_devices(vm, saved: list[dict]) -> None:
    """Into a VM built (MACHINE_STEPS) from the snapshot's config. Non-virtio devices get
    their state now; virtio activations are posted to the event loop (it runs them first
    thing when it starts, before any vCPU can touch a register)."""
    have = vm.devices.ids()
    want = [(e["kind"], e["id"]) for e in saved]
    if [tuple(k) for k in have] != want:
        raise SnapshotMismatch(f"the snapshot's devices {want} differ from the rebuilt "
                               f"VM's {[tuple(k) for k in have]}")
    transports = {id(t.device): t for t in vm.transports}
    resets = []
    for e in saved:
        dev = vm.devices.get(e["kind"], e["id"])
        tr = transports.get(id(dev))
        if (tr is None) != ("transport" not in e):
            raise SnapshotMismatch(f"{e['kind']}:{e['id']}: virtio in one build, not the other")
        try:
            if tr is None:
                if "state" in e and isinstance(dev, Snapshottable):
                    dev.restore_state(e["state"])
                continue
            if e.get("state") is not None and hasattr(dev, "check_state"):
                dev.check_state(e["state"])     # now: a mismatch refuses the restore
            if restore_transport(tr, e["transport"]):
                vm.loop.call_soon(lambda tr=tr, st=e.get("state"): activate_restored(tr, st))
                if isinstance(dev, TransportReset):
                    resets.append(dev)
        except SnapshotError:
            raise
        except (VirtqueueError, ValueError, KeyError, TypeError) as err:
            raise SnapshotMismatch(f"{e['kind']}:{e['id']}: cannot restore its state: "
                                   f"{type(err).__name__}: {err}") from None
    for dev in resets:   # after every activation: the guest learns its streams are gone
        vm.loop.call_soon(dev.transport_reset)

