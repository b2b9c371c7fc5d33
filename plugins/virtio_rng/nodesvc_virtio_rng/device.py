"""virtio-rng (virtio 1.x §5.4): fill each device-writable buffer with random bytes.

One queue, no features, no config space. Bytes come from the kernel CSPRNG
(`os.urandom` is getrandom(2)). A request is charged one op and its byte count
to the rate limiter; when the limiter says no, the chain is put back and the
queue waits for the limiter's wake-up (Firecracker's entropy device does the same).
"""

from __future__ import annotations

import logging
import os

from nodesvc.vmm.ratelimit import OneLimiter
from nodesvc.vmm.snapshot.devices import limiter_state, restore_limiter
from nodesvc.vmm.virtio import VirtioDevice, VirtqueueError
from nodesvc.vmm.virtio.constants import ID_RNG

log = logging.getLogger("nodesvc.virtio_rng")

QUEUE_SIZE = 256
# Linux asks for a few dozen bytes at a time; a cap keeps a hostile driver posting
# huge buffers from making us generate (and allocate) megabytes per request.
# The spec lets the device fill less than offered.
MAX_FILL = 64 << 10


class VirtioRng(OneLimiter, VirtioDevice):
    device_id = ID_RNG
    _limiter_owner = "entropy"
    queue_sizes = (QUEUE_SIZE,)

    def __init__(self, *, limiter=None, limiter_builder=None, event_loop=None):
        super().__init__()
        self._broken = False
        self.bytes_served = 0
        self._init_limiter(limiter, limiter_builder, event_loop)

    def activate(self, queues, interrupt) -> None:
        super().activate(queues, interrupt)
        self._broken = False

    def reset(self) -> None:
        self._broken = False
        super().reset()

    def close(self) -> None:
        if self.limiter is not None:
            self.limiter.close()

    def queue_notify(self, index: int) -> None:
        queues, interrupt = self.queues, self.interrupt   # a reset may clear them meanwhile
        if index != 0 or not queues or not queues[0].ready or self._broken:
            return
        q, done = queues[0], 0
        try:
            # A driver reset (vCPU thread) empties self.queues: stop touching the old ring.
            while self.queues and (chain := q.pop()) is not None:
                n = min(chain.writable_len, MAX_FILL)
                if n and not self._consume(n):
                    q.undo_pop()   # throttled: the limiter's wake-up resumes here
                    break
                written = q.write_chain(chain, os.urandom(n)) if n else 0
                q.add_used(chain.head, written)
                self.bytes_served += written
                done += 1
        except VirtqueueError:
            self._broken = True
            raise
        finally:
            if done:
                interrupt.signal_used(q)

    # -- rate limiter (OneLimiter) ------------------------------------------------------
    def _resumable(self) -> bool:
        return bool(self.queues) and not self._broken

    # -- snapshots (nodesvc.vmm.snapshot) -------------------------------------------------
    def save_state(self) -> dict:
        """The limiter's buckets (a throttled guest stays throttled) and the counter."""
        return {"bytes_served": self.bytes_served, "broken": self._broken,
                "limiter": limiter_state(self.limiter)}

    def restore_state(self, state: dict) -> None:
        """Event-loop thread, after activation on the restored queue."""
        self.bytes_served = int(state["bytes_served"])
        self._broken = bool(state["broken"])
        restore_limiter(self.limiter, state["limiter"])
