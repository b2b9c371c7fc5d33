"""virtio-mmio transport (version 2): the register state machine for one device.

Register accesses arrive on vCPU threads; queue notifications arrive as
ioeventfds (registered when the device is attached, see `register_notify_fds`) on
the event-loop thread, where the device does its work. Interrupts go out through the
device's IRQ line (an irqfd). One lock guards the registers; the device's
`activate`/`reset` run after it is released (serialized by a second lock), so a
device may use its interrupt handle (signal_config, fail) from them.
"""

from __future__ import annotations

import logging
import threading

from ..kvm import EventFd
from . import constants as V
from .boundary import ErrorBoundary
from .device import VirtioDevice
from .queue import Virtqueue

log = logging.getLogger("nodesvc.vmm.virtio")


class VirtioMmioTransport:
    def __init__(self, device: VirtioDevice, *, memory, irq, event_loop, vm=None, base: int = 0,
                 name: str = "virtio", boundary: ErrorBoundary | None = None):
        self.device, self.memory, self.irq, self.loop = device, memory, irq, event_loop
        self.vm, self.base, self.name = vm, base, name
        # every device entry point runs inside it (nodesvc.vmm.virtio.boundary)
        self.boundary = boundary if boundary is not None else ErrorBoundary(name)
        self.boundary.on_fail = self._enter_needs_reset
        self.queues = [Virtqueue(n) for n in device.queue_sizes]
        self.offered = device.features | V.TRANSPORT_FEATURES
        self._lock = threading.Lock()
        self._lifecycle = threading.Lock()     # orders activate/reset calls; never nested in _lock
        self._notify_fds: list[EventFd] = []
        self.failure: str | None = None
        self.notify_traps = 0   # QUEUE_NOTIFY writes that reached us as MMIO exits
        self._reset_state()

    def _reset_state(self) -> None:
        self.status = 0
        self.device_features_sel = self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self.interrupt_status = 0
        self.config_generation = 0
        self.active = False
        for q in self.queues:
            q.reset()

    # -- bus device -----------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset >= V.CONFIG:
            value = self.boundary.guard(self.device.read_config, offset - V.CONFIG, size)
            return 0 if value is None else value
        if size != 4:
            return 0  # registers are 32-bit; anything else is a driver bug
        with self._lock:
            return self._read_reg(offset)

    def _read_reg(self, off: int) -> int:
        q = self._selected()
        if off == V.MAGIC:
            return V.MMIO_MAGIC
        if off == V.VERSION:
            return V.MMIO_VERSION
        if off == V.DEVICE_ID:
            return self.device.device_id
        if off == V.VENDOR_ID:
            return V.MMIO_VENDOR
        if off == V.DEVICE_FEATURES:
            sel = self.device_features_sel
            return (self.offered >> (32 * sel)) & 0xFFFFFFFF if sel < 2 else 0
        if off == V.QUEUE_NUM_MAX:
            return q.max_size if q else 0
        if off == V.QUEUE_READY:
            return int(q.ready) if q else 0
        if off == V.INTERRUPT_STATUS:
            return self.interrupt_status
        if off == V.STATUS:
            return self.status
        if off == V.CONFIG_GENERATION:
            return self.config_generation
        if off in (V.SHM_LEN_LOW, V.SHM_LEN_HIGH):
            return 0xFFFFFFFF  # no shared memory regions
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= V.CONFIG:
            self.boundary.guard(self.device.write_config, offset - V.CONFIG, size, value)
            return
        if size != 4:
            return
        with self._lifecycle:
            with self._lock:
                after = self._write_reg(offset, value)
            if after is not None:
                after()

    def _write_reg(self, off: int, value: int):
        """Apply a register write; returns the device call (activate/reset) to make once
        the register lock is released, if any."""
        q = self._selected()
        features_phase = self.status & V.S_DRIVER and not self.status & V.S_FEATURES_OK
        queue_phase = self.status & V.S_FEATURES_OK and not self.status & V.S_DRIVER_OK
        if off == V.DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif off == V.DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif off == V.DRIVER_FEATURES:
            if features_phase and self.driver_features_sel < 2:
                shift = 32 * self.driver_features_sel
                self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (value << shift)
        elif off == V.QUEUE_SEL:
            self.queue_sel = value
        elif off == V.QUEUE_NOTIFY:
            # Normally swallowed by the ioeventfd; this is the slow path (e.g. no ioeventfd).
            self.notify_traps += 1
            if self.active and value < len(self.queues):
                self.loop.call_soon(lambda i=value: self._notify(i))
        elif off == V.INTERRUPT_ACK:
            self.interrupt_status &= ~value
        elif off == V.STATUS:
            return self._set_status(value)
        elif q is not None and queue_phase and not q.ready:
            self._write_queue_reg(q, off, value)
        elif q is not None and off == V.QUEUE_READY and queue_phase:
            q.ready = bool(value & 1)

    def _write_queue_reg(self, q: Virtqueue, off: int, value: int) -> None:
        lo, hi = 0xFFFFFFFF, 0xFFFFFFFF << 32
        if off == V.QUEUE_NUM:
            q.size = value
        elif off == V.QUEUE_READY:
            q.ready = bool(value & 1)
        elif off == V.QUEUE_DESC_LOW:
            q.desc_table = (q.desc_table & hi) | value
        elif off == V.QUEUE_DESC_HIGH:
            q.desc_table = (q.desc_table & lo) | (value << 32)
        elif off == V.QUEUE_AVAIL_LOW:
            q.avail_ring = (q.avail_ring & hi) | value
        elif off == V.QUEUE_AVAIL_HIGH:
            q.avail_ring = (q.avail_ring & lo) | (value << 32)
        elif off == V.QUEUE_USED_LOW:
            q.used_ring = (q.used_ring & hi) | value
        elif off == V.QUEUE_USED_HIGH:
            q.used_ring = (q.used_ring & lo) | (value << 32)

    def _selected(self) -> Virtqueue | None:
        return self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None

    # -- status state machine ---------------------------------------------------------------
    def _set_status(self, value: int):
        if value == 0:
            return self._reset()
        if value & ~self.status & V.S_FEATURES_OK:
            if self.driver_features & ~self.offered or not self.driver_features >> V.F_VERSION_1 & 1:
                value &= ~V.S_FEATURES_OK  # refuse: unknown features, or a legacy driver
        if value & ~self.status & V.S_DRIVER_OK and not value & V.S_FAILED:
            if self.active or self.failure is not None:
                # Started (or failed) already: only a reset (status 0) starts it again, and
                # NEEDS_RESET stays up until then (a driver toggling DRIVER_OK must not
                # re-activate a failed device behind the boundary's back).
                self.status = value | (self.status & V.S_NEEDS_RESET)
                return None
            self.status = value
            return self._activate()
        self.status = value | (self.status & V.S_NEEDS_RESET)
        return None

    def _activate(self):
        if not self.status & V.S_FEATURES_OK:
            self._fail_locked("DRIVER_OK without FEATURES_OK")
            return None
        for i, q in enumerate(self.queues):
            if not q.ready:
                continue
            problem = q.validate(self.memory)
            if problem:
                self._fail_locked(f"queue {i}: {problem}")
                return None
        event_idx = bool(self.driver_features >> V.F_EVENT_IDX & 1)
        for q in self.queues:
            if q.ready:
                q.activate(self.memory, event_idx)
        self.device.acked_features = self.driver_features
        self.active = True
        return self._activate_device

    def _activate_device(self) -> None:
        try:
            self.device.activate(self.queues, _Interrupt(self))
        except Exception as e:  # a device that cannot start fails visibly, the VM lives on
            self.fail(f"activation failed: {self.boundary.describe(e)}")

    def register_notify_fds(self) -> None:
        """One ioeventfd per queue on QUEUE_NOTIFY (datamatch = queue index), read on the
        event loop. Done once, when the device is attached: kicks before DRIVER_OK are
        ignored by `_notify`, and no vCPU thread ever issues KVM_IOEVENTFD."""
        if self.vm is None or self._notify_fds:
            return
        for i, q in enumerate(self.queues):
            evt = EventFd()
            self.vm.register_ioeventfd(evt, self.base + V.QUEUE_NOTIFY, 4, datamatch=i)
            self.loop.add_reader(evt.fd, lambda _ev, i=i, evt=evt: (evt.read(), self._notify(i)))
            self._notify_fds.append(evt)

    def process_notify(self, index: int) -> None:
        """Run the device for a queue kick now (the ioeventfd path calls this too)."""
        self._notify(index)

    def _notify(self, index: int) -> None:
        if not self.active or self.failure:
            return
        self.boundary.guard(self.device.queue_notify, index)

    def _reset(self):
        was_active = self.active or self.failure is not None
        self._reset_state()
        self.failure = None
        return self._reset_device if was_active else None

    def _reset_device(self) -> None:
        self.boundary.guard(self.device.reset)
        self.boundary.recovered()

    # -- failure and interrupts -------------------------------------------------------------
    def fail(self, reason: str) -> None:
        """The device cannot go on: count and log it (the boundary), then NEEDS_RESET.
        Any thread; the register lock must not be held."""
        self.boundary.fail(reason)

    def _enter_needs_reset(self, reason: str) -> None:
        with self._lock:
            self._needs_reset_locked(reason)

    def _fail_locked(self, reason: str) -> None:
        self.boundary.record(reason)
        self._needs_reset_locked(reason)

    def _needs_reset_locked(self, reason: str) -> None:
        self.failure = reason
        self.active = False
        self.status |= V.S_NEEDS_RESET
        if self.status & V.S_DRIVER_OK:
            self.interrupt_status |= V.INT_CONFIG
            self.irq.trigger()

    def raise_interrupt(self, bits: int) -> None:
        with self._lock:
            self.interrupt_status |= bits
        self.irq.trigger()

    def close(self) -> None:
        """Release the transport's own fds. The device is closed by its owner (the VM's
        DeviceManager), exactly once."""
        for evt in self._notify_fds:
            self.loop.remove_reader(evt.fd)
            evt.close()
        self._notify_fds = []


class _Interrupt:
    """The device's handle on its transport's interrupt and failure paths."""

    def __init__(self, transport: VirtioMmioTransport):
        self._t = transport

    def signal_used(self, queue: Virtqueue | None = None) -> None:
        if queue is not None and not queue.needs_interrupt():
            return
        self._t.raise_interrupt(V.INT_VRING)

    def signal_config(self) -> None:
        with self._t._lock:
            self._t.config_generation += 1
        self._t.raise_interrupt(V.INT_CONFIG)

    def fail(self, reason: str) -> None:
        self._t.fail(reason)
