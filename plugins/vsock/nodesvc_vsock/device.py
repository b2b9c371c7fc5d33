"""The virtio-vsock device (id 19): queues rx 0, tx 1, event 2; config = guest_cid (u64).

Work happens on the event-loop thread: queue kicks (ioeventfds) and host socket
readiness (the muxer's epoll fd) both end in `_run()`, which forwards guest TX
packets to the muxer and fills guest RX buffers with what the muxer has pending.
RX and event buffers are taken off their rings (and validated) as soon as the
guest posts them, and held until there is something to put in them.

`activate`/`reset` arrive on a vCPU thread (status register writes): they only
flip `active` and bump a generation; the loop thread does the real work the next
time it enters, so device state is only ever touched by one thread.
"""

from __future__ import annotations

import collections
import struct

from nodesvc.vmm.virtio import VirtioDevice, constants as V
from nodesvc.vmm.virtio.ring import FastRing, buffers_len, scatter

from .muxer import Muxer
from .packet import EVENT_TRANSPORT_RESET, HDR_SIZE, RxBuffer, parse_tx

RX, TX, EVT = 0, 1, 2
QUEUE_SIZE = 256


class VsockDevice(VirtioDevice):
    device_id = V.ID_VSOCK
    features = 0  # stream sockets only; the transport offers VIRTIO_F_VERSION_1 itself
    queue_sizes = (QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self, guest_cid: int, uds_path: str, event_loop, **muxer_options):
        super().__init__()
        self.guest_cid = guest_cid
        self.loop = event_loop
        self.muxer = Muxer(guest_cid, uds_path, event_loop, on_activity=self._on_host_activity,
                           **muxer_options)
        self._generation = self._seen_generation = 0
        self.rings: tuple[FastRing, ...] = ()
        self.active = False
        self._rx_bufs: collections.deque = collections.deque()
        self._evt_bufs: collections.deque = collections.deque()
        self._tx_blocked = False
        self._reset_event_pending = False
        self.stats = self.muxer.stats  # one counter set for the whole device

    def config_bytes(self) -> bytes:
        return struct.pack("<Q", self.guest_cid)

    # -- lifecycle ----------------------------------------------------------------------
    def activate(self, queues, interrupt) -> None:
        super().activate(queues, interrupt)
        self.rings = tuple(FastRing(q) for q in queues)   # idle for queues left disabled
        self.active = True
        # host connections may have queued REQUESTs before the driver came up
        self.loop.call_soon(self._on_host_activity)

    def reset(self) -> None:
        self.active = False
        self._generation += 1
        super().reset()
        self.loop.call_soon(self._catch_up)

    def _catch_up(self) -> None:
        """Loop thread: forget what belonged to the driver before its last reset."""
        if self._seen_generation != self._generation:
            self._seen_generation = self._generation
            self.muxer.reset()  # the guest's sockets are gone: close their host ends
            self._rx_bufs.clear()
            self._evt_bufs.clear()
            self._tx_blocked = False

    def close(self) -> None:
        self.active = False
        self.muxer.close()

    def transport_reset(self) -> None:
        """After a snapshot restore: drop every stream and tell the driver its transport reset.

        The guest's sockets point at host connections that did not survive; the
        event (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET) makes Linux reset them all and
        re-read guest_cid. Call on the event-loop thread.
        """
        self._catch_up()
        self.muxer.reset()
        self._reset_event_pending = True
        if self.active:
            self._deliver_events()

    # -- snapshots (nodesvc.vmm.snapshot) -------------------------------------------------
    def save_state(self) -> dict:
        """The rx and event buffers taken off their rings and held (they are the guest's:
        dropping them would shrink its queues for good) and a reset still owed to the
        driver. Host connections are not saved: after a restore they are gone, and the
        driver is told so (transport_reset)."""
        held = lambda q: [[h, [list(b) for b in rd], [list(b) for b in wr]] for h, rd, wr in q]  # noqa: E731
        return {"guest_cid": self.guest_cid, "rx_held": held(self._rx_bufs),
                "evt_held": held(self._evt_bufs), "reset_pending": self._reset_event_pending}

    def restore_state(self, state: dict) -> None:
        """Event-loop thread, after activation on the restored queues."""
        if state["guest_cid"] != self.guest_cid:
            raise ValueError(f"snapshot guest_cid {state['guest_cid']} != {self.guest_cid}")
        chains = lambda saved: collections.deque(  # noqa: E731
            (h, [tuple(b) for b in rd], [tuple(b) for b in wr]) for h, rd, wr in saved)
        self._rx_bufs, self._evt_bufs = chains(state["rx_held"]), chains(state["evt_held"])
        self._reset_event_pending = bool(state["reset_pending"])

    # -- queue kicks and host activity ----------------------------------------------------
    def queue_notify(self, index: int) -> None:
        self._catch_up()
        if not self.active:
            return
        if index == EVT:
            self._deliver_events()
        else:
            self._run()

    def _on_host_activity(self) -> None:
        self._catch_up()
        if self.active:
            self._run()

    def _run(self) -> None:
        while True:
            self._process_tx()
            self._process_rx()
            # RX just drained replies that were holding TX back: go round again
            if not (self._tx_blocked and self.muxer.can_accept_tx()):
                return
            self._tx_blocked = False

    def _take(self, index: int, held: collections.deque, min_len: int) -> None:
        """Move newly posted chains of a device-writable queue into `held`."""
        ring = self.rings[index]
        q = ring.q
        returned = False
        while len(held) < q.size:  # a driver cannot legitimately have more outstanding
            chain = ring.pop()
            if chain is None:
                break
            if buffers_len(chain[2]) < min_len:  # useless for us: hand it straight back
                ring.add_used(chain[0], 0)
                returned = True
                self.stats["short_buffers"] += 1
            else:
                held.append(chain)
        if returned:
            self.interrupt.signal_used(q)

    def _process_tx(self) -> None:
        ring = self.rings[TX]
        if ring.idle:
            return
        used = False
        while True:
            if not self.muxer.can_accept_tx():
                self._tx_blocked = True
                break
            chain = ring.pop()
            if chain is None:
                break
            parsed = parse_tx(ring, chain)
            if parsed is None:
                self.stats["bad_packets"] += 1
            else:
                self.muxer.from_guest(*parsed)
            ring.add_used(chain[0], 0)  # only now: the payload views pointed into this buffer
            used = True
        if used:
            self.interrupt.signal_used(ring.q)

    def _process_rx(self) -> None:
        ring = self.rings[RX]
        self._take(RX, self._rx_bufs, HDR_SIZE)
        if not self.muxer.has_pending() or ring.idle:
            return
        used = False
        while self._rx_bufs:
            buf = RxBuffer(ring, self._rx_bufs[0])
            hdr = self.muxer.fill(buf)
            if hdr is None:
                break
            self._rx_bufs.popleft()
            ring.add_used(buf.head, buf.finish(hdr))
            used = True
        if used:
            self.interrupt.signal_used(ring.q)

    def _deliver_events(self) -> None:
        self._take(EVT, self._evt_bufs, 4)
        if self._reset_event_pending and self._evt_bufs:
            ring, chain = self.rings[EVT], self._evt_bufs.popleft()
            scatter(ring.nonempty_views(chain[2]), struct.pack("<I", EVENT_TRANSPORT_RESET))
            ring.add_used(chain[0], 4)
            self._reset_event_pending = False
            self.interrupt.signal_used(ring.q)
