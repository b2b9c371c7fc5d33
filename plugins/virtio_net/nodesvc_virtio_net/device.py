"""The virtio-net device model (device id 1): one RX and one TX queue over a TAP fd.

Lifecycle (see nodesvc.vmm.virtio.device): activate() arrives on a vCPU thread,
so it only records state and schedules `_start` on the event loop, where all RX
and TX work happens (queue kicks, TAP readability, limiter wake-ups). reset()
stops polling and forgets in-flight frames; the TAP fd lives as long as the
device. Any entry point that meets a hostile chain fails the device (NEEDS_RESET)
instead of raising into the event loop.
"""

from __future__ import annotations

import base64
import logging
import os
import struct
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.snapshot.devices import limiter_state, restore_limiter
from nodesvc.vmm.virtio import VirtioDevice, VirtqueueError, constants as V

from . import constants as C
from .mmds import MmdsPort
from .rx import RxPath
from .tx import TxPath

log = logging.getLogger("nodesvc.virtio_net")


@dataclass
class NetStats:
    """Counters; every frame the device does not deliver lands in one of them."""
    rx_packets: int = 0
    rx_bytes: int = 0          # Ethernet bytes (vnet header excluded), both directions
    rx_dropped: int = 0        # frame larger than the guest's buffer(s) or than 64 KiB
    rx_throttled: int = 0      # passes stopped by the rx rate limiter
    rx_no_buffers: int = 0     # passes stopped because the guest posted no buffers
    rx_bad_buffers: int = 0    # chains too small to hold a header (completed with 0)
    rx_tap_errors: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0        # the TAP refused the write
    tx_malformed: int = 0      # chain without a header, or longer than 64 KiB
    tx_throttled: int = 0
    tx_filtered: int = 0       # taken by tx_filter before the TAP
    tx_mmds: int = 0           # guest frames for the MMDS address (never reach the TAP)
    rx_mmds: int = 0           # frames the MMDS stack gave the guest (also in rx_packets)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class VirtioNet(VirtioDevice):
    device_id = V.ID_NET
    queue_sizes = (C.QUEUE_SIZE, C.QUEUE_SIZE)

    def __init__(self, tap, event_loop, *, name: str = "virtio-net", mac: bytes | None = None,
                 mtu: int | None = None, rx_limiter=None, tx_limiter=None,
                 limiter_factory: Callable[[Mapping[str, Any]], Any] | None = None,
                 mmds_stack: Callable[[], Any] | None = None):
        super().__init__()
        self.tap, self.event_loop, self.name = tap, event_loop, name
        self.mac, self.mtu = mac, mtu
        self.features = (C.OFFLOAD_FEATURES | 1 << C.F_MRG_RXBUF | 1 << C.F_STATUS
                         | (1 << C.F_MAC if mac else 0) | (1 << C.F_MTU if mtu else 0))
        self.rx_limiter = self.tx_limiter = None
        self._limiter_factory = limiter_factory
        self._set_limiter("rx", rx_limiter)
        self._set_limiter("tx", tx_limiter)
        self.stats = NetStats()
        #: hook before the TAP: `tx_filter(frame: bytes) -> bool`, True = frame taken
        self.tx_filter: Callable[[bytes], bool] | None = None
        self.rx: RxPath | None = None
        self.tx: TxPath | None = None
        self.failed: str | None = None
        # TX's "more to do" doorbell: an fd, so resuming waits behind every other ready fd
        # (a call_soon chain would run before the loop polls again)
        self._tx_resume = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._tx_resume_polled = False
        #: the MMDS side (nodesvc_virtio_net.mmds), when this interface serves it;
        #: `mmds_stack()` makes a fresh nodesvc.mmds.MmdsStack at every activation
        self.mmds = MmdsPort(self, mmds_stack, event_loop) if mmds_stack is not None else None

    # -- virtio device ------------------------------------------------------------------
    def config_bytes(self) -> bytes:
        # struct virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu
        return struct.pack("<6sHHH", self.mac or bytes(6), C.S_LINK_UP, 1, self.mtu or 0)

    def acked(self, bit: int) -> bool:
        return bool(self.acked_features >> bit & 1)

    def activate(self, queues, interrupt) -> None:
        super().activate(queues, interrupt)
        offload = 0
        for feature, flag in C.TAP_OFFLOADS:
            if self.acked(feature):
                offload |= flag
        self.tap.set_offload(offload)  # raising here fails activation visibly
        self.failed = None
        if self.mmds is not None:
            self.mmds.start()   # before TX exists: no MMDS frame can slip to the TAP
        self.rx = RxPath(self, queues[C.RX_QUEUE], mergeable=self.acked(C.F_MRG_RXBUF),
                         guest_csum=self.acked(C.F_GUEST_CSUM))
        self.tx = TxPath(self, queues[C.TX_QUEUE])
        self.event_loop.call_soon(self._start)

    def _start(self) -> None:
        if not self._tx_resume_polled and self._tx_resume >= 0:
            self.event_loop.add_reader(self._tx_resume, self._on_tx_resume)
            self._tx_resume_polled = True
        self._run(self.rx)  # frames may already wait in the TAP

    def queue_notify(self, index: int) -> None:
        if index == C.RX_QUEUE:
            self._run(self.rx)
        elif index == C.TX_QUEUE:
            self._run(self.tx)

    def reset(self) -> None:
        self._stop()
        try:
            self.tap.set_offload(0)
        except OSError:
            pass
        super().reset()

    def _stop(self) -> None:
        if self.rx is not None:
            self.rx.stop()
        self.rx = self.tx = None
        if self.mmds is not None:
            self.mmds.stop()
        if self._tx_resume_polled:
            self.event_loop.remove_reader(self._tx_resume)
            self._tx_resume_polled = False

    def close(self) -> None:
        self._stop()
        if self.mmds is not None:
            self.mmds.close()
        if self._tx_resume >= 0:
            os.close(self._tx_resume)
            self._tx_resume = -1
        for limiter in (self.rx_limiter, self.tx_limiter):
            if limiter is not None:
                limiter.close()
        self.tap.close()

    # -- event-loop callbacks -----------------------------------------------------------
    def on_tap_readable(self, _events: int = 0) -> None:
        self._run(self.rx)

    def on_tx_ready(self) -> None:
        self._run(self.tx)

    def run_rx(self) -> None:
        """An RX pass now (MMDS answers after a TX pass; the MMDS timer)."""
        self._run(self.rx)

    on_mmds_timer = run_rx

    def resume_tx_later(self) -> None:
        os.eventfd_write(self._tx_resume, 1)

    def _on_tx_resume(self, _events: int = 0) -> None:
        try:
            os.eventfd_read(self._tx_resume)
        except BlockingIOError:
            pass
        self.on_tx_ready()

    def _run(self, path, fn=None) -> None:
        """Run `path.process()` (or `fn`) unless the device is reset or failed. A bad
        chain stops both paths and propagates: the framework's error boundary (every
        entry point of a device runs inside it) puts the device into NEEDS_RESET."""
        if path is None or self.failed:
            return
        try:
            (fn or path.process)()
        except VirtqueueError as e:
            self.failed = str(e)
            if self.rx is not None:
                self.rx.stop()
            raise

    # -- host side ----------------------------------------------------------------------
    def inject_rx(self, frame: bytes) -> None:
        """Deliver a host-made Ethernet frame to the guest (event-loop thread)."""
        self._run(self.rx, lambda: self.rx.inject(frame))

    def update_rate_limiter(self, config: Mapping[str, Any] | None,
                            which: str | None = None) -> None:
        """The RateLimited capability: `which` is "rx" or "tx"."""
        if which not in ("rx", "tx"):
            raise ConfigError(f"{self.name}: name the limiter to change: rx or tx, "
                              f"got {which!r}")
        self.update_rate_limiters(**{which: config})

    def update_rate_limiters(self, rx: Mapping[str, Any] | None = None,
                             tx: Mapping[str, Any] | None = None) -> None:
        """Firecracker's PATCH /network-interfaces: change buckets on a running VM.

        An existing limiter is updated in place; one the device did not have is built
        from the config. Any thread; paused queues are re-run on the event loop."""
        for which, cfg in (("rx", rx), ("tx", tx)):
            if cfg is None:
                continue
            current = getattr(self, f"{which}_limiter")
            if current is not None:
                current.update(cfg)
            elif self._limiter_factory is not None:
                self._set_limiter(which, self._limiter_factory(cfg))
        self.event_loop.call_soon(self._resume_all)

    def _set_limiter(self, which: str, limiter) -> None:
        setattr(self, f"{which}_limiter", limiter)
        if limiter is not None:
            wake = self.on_tap_readable if which == "rx" else self.on_tx_ready
            limiter.set_wakeup(wake)

    def _resume_all(self) -> None:
        self.on_tap_readable()
        self.on_tx_ready()

    # -- snapshots (nodesvc.vmm.snapshot) -------------------------------------------------
    def save_state(self) -> dict:
        """Both limiters' buckets, a failure, and the RX frame in hand: read from the TAP
        (or injected) but not yet given to the guest, because the rx limiter said wait or
        (MRG_RXBUF) buffers ran out. Its bytes are kept and the chains it had filled are
        handed back to the ring (they are the last ones popped), so a restore neither
        loses the frame nor shrinks the guest's RX queue. The MAC is not kept: a clone
        may be given another one."""
        rx = self.rx
        frame, held, injected = None, 0, []
        if rx is not None:
            if rx.pending:
                placed = b"".join(bytes(v) for _, _, views in rx.held for v in views)
                frame = placed[:rx.placed] + (bytes(rx.spill) if rx.spill is not None else b"")
                held = len(rx.held)
            injected = [base64.b64encode(f).decode() for f in rx.injected]
        return {"rx_limiter": limiter_state(self.rx_limiter),
                "tx_limiter": limiter_state(self.tx_limiter), "failed": self.failed,
                "rx_frame": base64.b64encode(frame).decode() if frame is not None else None,
                "rx_frame_chains": held, "rx_injected": injected}

    def restore_state(self, state: dict) -> None:
        """Event-loop thread, after activation on the restored queues (before their kick)."""
        restore_limiter(self.rx_limiter, state["rx_limiter"])
        restore_limiter(self.tx_limiter, state["tx_limiter"])
        self.failed = state["failed"]
        rx = self.rx
        if rx is None:
            return
        for text in state["rx_injected"]:
            rx.injected.append(base64.b64decode(text))
        if state["rx_frame"] is not None:
            # Pop those chains again and fill them with the same bytes: the frame goes
            # first, ahead of injected frames and the TAP, as it would have.
            rx.queue.next_avail = (rx.queue.next_avail - int(state["rx_frame_chains"])) & 0xFFFF
            rx.injected.appendleft(base64.b64decode(state["rx_frame"]))

    def stats_dict(self) -> dict[str, int]:
        return self.stats.as_dict()
