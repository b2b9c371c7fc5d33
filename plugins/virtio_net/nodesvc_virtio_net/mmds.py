"""The net device's side of MMDS (nodesvc.mmds): guest frames for the metadata address are
answered inside the VMM and never reach the TAP or the rate limiters.

    TX  every chain is looked at before the tx limiter: ARP for / IPv4 to the MMDS
        address (fixed offsets in the first 42 bytes) goes to the stack, is completed
        and counted in `tx_mmds`; the TX pass then runs RX so the answer goes out.
    RX  the RX pass pulls the stack's frames after host-injected ones and before the
        TAP, one at a time and only while the guest has posted buffers, so segments
        the guest has no room for wait inside the (bounded) stack, not in a queue here.
    timer  a one-shot timerfd on the device's loop (inside its error boundary) wakes RX
        at the stack's next retransmission deadline, or at once when an RX pass ended
        on its budget with MMDS frames left. While RX cannot make progress (no buffers,
        a frame held for the limiter) it stays disarmed: the driver's kick or the
        limiter's wake-up runs RX, which re-arms it. So a stalled guest cannot make the
        timer spin.

The stack is rebuilt on every activation (a reset forgets connections); the document and
tokens live in the VMM's `Mmds`. The timerfd is created with the device (at attach, while
the jail's baseline still allows timerfd_create) and only re-armed afterwards.
"""

from __future__ import annotations

import time
from typing import Callable

from nodesvc.net.tap import VNET_HDR_LEN
from nodesvc.vmm.timerfd import TimerFd

#: bytes of the frame `detour` looks at: Ethernet + an ARP body (the IPv4 dst is earlier)
HEAD = 42


class MmdsPort:
    def __init__(self, dev, make_stack: Callable[[], object], event_loop,
                 clock: Callable[[], float] = time.monotonic):
        self.dev, self.make_stack, self.clock = dev, make_stack, clock
        self.stack = None
        self.timer = TimerFd(event_loop, self._expired)
        self._armed: float | None = None   # monotonic deadline armed (0.0: at once)

    # -- lifecycle (activation: vCPU thread, before any TX can run; the rest: loop) -------
    def start(self) -> None:
        self.stack = self.make_stack()
        self._disarm()

    def stop(self) -> None:
        self.stack = None
        self._disarm()

    def close(self) -> None:
        self.stack = None
        self.timer.close()

    # -- TX --------------------------------------------------------------------------------
    def take(self, views) -> bool:
        """The chain's frame, if it is for MMDS, goes to the stack: True = taken."""
        stack = self.stack
        if stack is None:
            return False
        first = views[0]
        if len(first) >= VNET_HDR_LEN + HEAD:
            head = bytes(first[VNET_HDR_LEN:VNET_HDR_LEN + HEAD])
        else:   # header in a buffer of its own, or a tiny frame
            head = b"".join(views)[VNET_HDR_LEN:VNET_HDR_LEN + HEAD]
        if not stack.detour(head):
            return False
        # Copied once, whole: the guest may rewrite its buffers as soon as the chain is used.
        stack.handle(b"".join(views)[VNET_HDR_LEN:])
        return True

    # -- RX --------------------------------------------------------------------------------
    def next_frame(self) -> bytes | None:
        stack = self.stack
        return None if stack is None else stack.pending_rx()

    def rearm(self, can_send: bool) -> None:
        """After an RX pass: when to run RX again for the stack's sake."""
        stack = self.stack
        if stack is None or not can_send:
            self._disarm()
            return
        now = self.clock()
        if stack.has_pending(now):
            self._arm(0.0, 0)
            return
        deadline = stack.next_deadline()
        if deadline is None:
            self._disarm()
        else:
            self._arm(deadline, max(0, int((deadline - now) * 1e9)))

    def _arm(self, key: float, delay_ns: int) -> None:
        if self._armed != key or key == 0.0:
            self.timer.arm(delay_ns)
            self._armed = key

    def _disarm(self) -> None:
        if self._armed is not None:
            self.timer.disarm()
            self._armed = None

    def _expired(self) -> None:
        self._armed = None
        self.dev.on_mmds_timer()
