"""TX: guest chains (virtio_net_hdr_v1 + frame) to the TAP with one writev each.

The TAP has IFF_VNET_HDR, so the guest's header (checksum/GSO hints) goes
through untouched and the guest buffers are written in place — no copy. Before
the TAP, an optional `tx_filter(frame) -> bool` sees the Ethernet frame and
returns True when it *took* the frame (MMDS will answer its own traffic this
way); taken frames are not charged to the rate limiter. Frames for the MMDS
address go to the device's MMDS stack (nodesvc_virtio_net.mmds) before the
limiter is even asked, so they can neither use nor wait for its budget. Runs on
the event-loop thread only.
"""

from __future__ import annotations

import errno
import logging
import os

from nodesvc.net.tap import VNET_HDR_LEN
from nodesvc.vmm.ratelimit import consume_op, replenish_op
from nodesvc.vmm.virtio.ring import FastRing, buffers_len

from .constants import MAX_BUFFER_LEN

log = logging.getLogger("nodesvc.virtio_net")
#: chains per pass before yielding the loop to other fds (see VirtioNet.resume_tx_later)
BUDGET = 256


class TxPath:
    def __init__(self, dev, queue):
        self.dev, self.queue, self.ring = dev, queue, FastRing(queue)
        self.fd, self.stats = dev.tap.fd, dev.stats

    def process(self) -> None:
        ring, stats, dev = self.ring, self.stats, self.dev
        writev, fd = os.writev, self.fd
        limiter, tx_filter, mmds = dev.tx_limiter, dev.tx_filter, dev.mmds
        used = mmds_taken = 0
        for _ in range(BUDGET):
            chain = ring.pop()
            if chain is None:
                break
            head, readable, _ = chain
            nbytes = buffers_len(readable)
            if not VNET_HDR_LEN <= nbytes <= MAX_BUFFER_LEN:
                stats.tx_malformed += 1     # no header, or larger than any legal frame
                ring.add_used(head, 0)
                used += 1
                continue
            views = ring.nonempty_views(readable)
            if mmds is not None and mmds.take(views):
                mmds_taken += 1
                ring.add_used(head, 0)
                used += 1
                continue
            # one op + the bytes with the header, as Firecracker charges
            if limiter is not None and not consume_op(limiter, nbytes):
                ring.undo_pop()             # retried on the limiter's wake-up
                stats.tx_throttled += 1
                break
            if tx_filter is not None and tx_filter(b"".join(views)[VNET_HDR_LEN:]):
                replenish_op(limiter, nbytes)
                stats.tx_filtered += 1
            else:
                try:
                    writev(fd, views)
                    stats.tx_packets += 1
                    stats.tx_bytes += nbytes - VNET_HDR_LEN
                except OSError as e:
                    self._write_failed(e)
            ring.add_used(head, 0)
            used += 1
        else:
            if ring.has_available():  # budget spent with work left: yield to other fds
                dev.resume_tx_later()
        if used:
            dev.interrupt.signal_used(self.queue)
        if mmds_taken:
            stats.tx_mmds += mmds_taken
            dev.run_rx()     # the answers (ARP, SYN-ACK, data) go out now

    def _write_failed(self, e: OSError) -> None:
        # EAGAIN: the TAP's queue is full (no reader keeping up); EIO: link down;
        # EINVAL: a GSO header the kernel refuses. The frame is dropped, counted.
        self.stats.tx_dropped += 1
        if e.errno not in (errno.EAGAIN, errno.EIO):
            log.debug("%s: TAP write failed: %s", self.dev.name, e)
