"""RX: frames from the TAP, injected by the host, or from MMDS, into guest buffers.

Zero-copy in the common case: one readv() scatters the TAP frame (vnet header
included) straight into the guest chain's buffers, followed by a host "bounce"
buffer. A frame that fits the chain never touches the bounce; one that does not
spills into it, which is how an oversized frame is *noticed* instead of being
truncated by the kernel (tun silently cuts a frame to the iov). A spilled frame
continues into further chains with MRG_RXBUF, and is dropped (and counted)
without it.

A frame read but not yet given to the guest is "pending": waiting for the rate
limiter or (MRG_RXBUF) for more buffers. While anything is pending, or the
queue has no buffers, the TAP fd is off the event loop so a full guest never
makes a level-triggered fd spin it; the driver's RX kick or the limiter's
wake-up resumes. Frames the kernel queues meanwhile wait in the TAP's own
queue (beyond its txqueuelen the kernel drops and counts them on the link).
The rx limiter is charged one op plus the frame's bytes *with* the 12-byte
header, as Firecracker charges.

Runs only on the event-loop thread.
"""

from __future__ import annotations

import collections
import logging
import os
import struct

from nodesvc.net.tap import VNET_HDR_LEN
from nodesvc.vmm.ratelimit import consume_op
from nodesvc.vmm.virtio.ring import FastRing, buffers_len, scatter

from .constants import HDR_FLAGS_OFFSET, HDR_NUM_BUFFERS_OFFSET, MAX_BUFFER_LEN

log = logging.getLogger("nodesvc.virtio_net")
#: frames per pass before yielding the loop to other fds (fairness under flood)
BUDGET = 256
_U16 = struct.Struct("<H")


class RxPath:
    def __init__(self, dev, queue, *, mergeable: bool, guest_csum: bool):
        self.dev, self.queue, self.ring = dev, queue, FastRing(queue)
        self.fd, self.stats = dev.tap.fd, dev.stats
        self.mergeable, self.guest_csum = mergeable, guest_csum
        # +1 so a readv that fills everything means "bigger than any legal frame"
        self.bounce = memoryview(bytearray(MAX_BUFFER_LEN + 1))
        self.held: list[tuple[int, int, list]] = []   # (head, capacity, views) of the pending frame
        self.pending = 0          # length (header included) of the pending frame; 0 = none
        self.placed = 0           # bytes of it already in `held` chains
        self.spill = None         # memoryview of the bytes still to place
        self.injected: collections.deque[bytes] = collections.deque()
        self.polling = False
        self.completed = 0        # chains handed back, for interrupt decisions

    # -- entry points ------------------------------------------------------------------
    def process(self) -> None:
        """Move frames to the guest until the TAP is empty, buffers run out, or the limiter says wait."""
        done_before, poll = self.completed, False
        mmds = self.dev.mmds
        for _ in range(BUDGET):
            if self.pending:
                if not self._place_spill():
                    break                         # MRG_RXBUF frame waits for more buffers
                if not self.pending:
                    continue                      # it was dropped (counted)
                limiter = self.dev.rx_limiter
                if limiter is not None and not consume_op(limiter, self.pending):
                    self.stats.rx_throttled += 1  # the limiter's wake-up calls process() again
                    break
                self._publish()
                continue
            if self.injected:
                self._open_frame(memoryview(self.injected.popleft()))
                continue
            if mmds is not None and self.ring.has_available():
                frame = mmds.next_frame()       # made only now that a buffer waits
                if frame is not None:
                    self.stats.rx_mmds += 1
                    self._open_frame(memoryview(bytes(VNET_HDR_LEN) + frame))
                    continue
            chain = self._next_chain(first=True)
            if chain is None:
                self.stats.rx_no_buffers += 1     # the driver's RX kick resumes us
                break
            if not self._read_tap(chain):
                poll = True                       # TAP empty (or failing): wait for it
                break
        else:
            poll = True  # budget spent with work left: let other fds run, epoll brings us back
        self._set_polling(poll)
        if self.completed != done_before:
            self.dev.interrupt.signal_used(self.queue)
        if mmds is not None:    # RX can send only with no frame held and a buffer posted
            mmds.rearm(not self.pending and self.ring.has_available())

    def inject(self, frame: bytes) -> None:
        """Queue a host-made Ethernet frame for the guest, ahead of TAP traffic."""
        self.injected.append(bytes(VNET_HDR_LEN) + bytes(frame))
        self.process()

    def stop(self) -> None:
        self._set_polling(False)
        self.held, self.pending, self.spill = [], 0, None
        self.injected.clear()

    def _complete(self, head: int, length: int) -> None:
        self.ring.add_used(head, length)
        self.completed += 1

    # -- chains ------------------------------------------------------------------------
    def _next_chain(self, first: bool):
        """Pop a usable chain as (head, capacity, views); unusable ones go back empty.

        Completing a bad chain at once is safe even mid-frame: a frame's own chains
        reach the used ring together in _publish, so they stay contiguous (MRG_RXBUF)."""
        while True:
            chain = self.ring.pop()
            if chain is None:
                return None
            head, _, writable = chain
            cap = buffers_len(writable)
            if cap < (VNET_HDR_LEN if first else 1):
                self.stats.rx_bad_buffers += 1
                self._complete(head, 0)
                continue
            return head, cap, self.ring.nonempty_views(writable)

    # -- frames ------------------------------------------------------------------------
    def _read_tap(self, chain) -> bool:
        head, cap, views = chain
        try:
            n = os.readv(self.fd, views + [self.bounce])
        except BlockingIOError:
            self.ring.undo_pop()
            return False
        except OSError as e:  # e.g. EBADFD after the TAP was deleted: count, don't spin
            self.ring.undo_pop()
            self.stats.rx_tap_errors += 1
            log.warning("%s: TAP read failed: %s", self.dev.name, e)
            return False
        if n > MAX_BUFFER_LEN or (n > cap and not self.mergeable) or n < VNET_HDR_LEN:
            self.stats.rx_dropped += 1     # too big for the guest's buffer: reuse the chain
            self.ring.undo_pop()
            return True
        self.held, self.pending, self.placed = [chain], n, min(n, cap)
        self.spill = self.bounce[:n - cap] if n > cap else None
        return True

    def _open_frame(self, data: memoryview) -> None:
        self.held, self.pending, self.placed, self.spill = [], len(data), 0, data

    def _place_spill(self) -> bool:
        """Copy what is left of the pending frame into more chains; False: out of buffers."""
        while self.spill is not None:
            if self.held and not self.mergeable:
                self._drop_pending()       # without MRG_RXBUF a frame must fit one chain
                return True
            chain = self._next_chain(first=not self.held)
            if chain is None:
                return False
            _, cap, views = chain
            take = min(cap, len(self.spill))
            scatter(views, self.spill[:take])
            self.held.append(chain)
            self.placed += take
            self.spill = self.spill[take:] if take < len(self.spill) else None
        return True

    def _drop_pending(self) -> None:
        self.stats.rx_dropped += 1
        for head, _, _ in self.held:
            self._complete(head, 0)
        self.held, self.pending, self.spill = [], 0, None

    def _publish(self) -> None:
        """Fix up the header and hand the pending frame's chains to the guest."""
        n, held = self.pending, self.held
        first = held[0][2]
        v0 = first[0]
        # tun leaves num_buffers alone (it writes the 10-byte legacy header); and without
        # GUEST_CSUM the spec wants no checksum hints (tun may set DATA_VALID)
        if len(v0) >= VNET_HDR_LEN:         # the usual layout: header in one buffer
            _U16.pack_into(v0, HDR_NUM_BUFFERS_OFFSET, len(held))
            if not self.guest_csum:
                v0[HDR_FLAGS_OFFSET] = 0
        else:
            scatter(first, _U16.pack(len(held)), HDR_NUM_BUFFERS_OFFSET)
            if not self.guest_csum:
                scatter(first, b"\0", HDR_FLAGS_OFFSET)
        if len(held) == 1:
            self._complete(held[0][0], n)
        else:
            left = n
            for head, cap, _ in held:
                k = min(cap, left)
                self._complete(head, k)
                left -= k
        self.stats.rx_packets += 1
        self.stats.rx_bytes += n - VNET_HDR_LEN
        self.held, self.pending, self.spill = [], 0, None

    def _set_polling(self, on: bool) -> None:
        if on == self.polling:
            return
        loop = self.dev.event_loop
        if on:
            loop.add_reader(self.fd, self.dev.on_tap_readable)
        else:
            loop.remove_reader(self.fd)
        self.polling = on
