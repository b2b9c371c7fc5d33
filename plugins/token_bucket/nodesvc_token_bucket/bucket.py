"""One token bucket with Firecracker's arithmetic (src/vmm/src/rate_limiter/mod.rs).

Pure: no fds, no threads; time comes from an injectable monotonic ns clock, so
tests can drive it. Integers throughout — Python ints don't overflow, so the
gcd pre-reduction Firecracker needs for u64 is unnecessary; the floor/ceil
results are the same.
"""

from __future__ import annotations

import enum
import time
from typing import Callable

NS_PER_MS = 1_000_000

Clock = Callable[[], int]   # monotonic nanoseconds


class Reduction(enum.Enum):
    SUCCESS = "success"                 # tokens taken
    FAILURE = "failure"                 # not enough tokens; nothing taken
    OVER_CONSUMPTION = "over"           # more than `size` taken; see `over_tokens`


class TokenBucket:
    """`size` tokens refill linearly from empty to full in `refill_time_ms`.

    Starts full. `one_time_burst` is extra initial credit, spent first and never
    refilled. Size or refill time 0 disables the bucket: every reduce() succeeds.
    """

    def __init__(self, size: int, refill_time_ms: int, one_time_burst: int = 0,
                 *, clock: Clock = time.monotonic_ns):
        if min(size, refill_time_ms, one_time_burst) < 0:
            raise ValueError("bucket parameters must be non-negative")
        self.size = size
        self.refill_time_ms = refill_time_ms
        self.initial_one_time_burst = one_time_burst
        self.one_time_burst = one_time_burst
        self.budget = size
        self._refill_ns = refill_time_ms * NS_PER_MS
        self._clock = clock
        self._last = clock()
        #: False when size or refill time is 0. A plain attribute: reduce() is on the hot path.
        self.enabled = size > 0 and refill_time_ms > 0
        #: After OVER_CONSUMPTION: how many tokens beyond the (emptied) budget were taken.
        self.over_tokens = 0

    @classmethod
    def from_spec(cls, spec, *, clock: Clock = time.monotonic_ns) -> "TokenBucket":
        """From a parsed config bucket ({"size", "one_time_burst", "refill_time"})."""
        return cls(spec["size"], spec["refill_time"], spec.get("one_time_burst", 0), clock=clock)

    def spec(self) -> dict[str, int]:
        """The config this bucket was built from (for GET vm/config)."""
        return {"size": self.size, "one_time_burst": self.initial_one_time_burst,
                "refill_time": self.refill_time_ms}

    def _auto_replenish(self) -> None:
        now = self._clock()
        delta = now - self._last
        if delta >= self._refill_ns:
            self.budget = self.size
            self._last = now
            return
        tokens = delta * self.size // self._refill_ns
        # Advance the clock only by the time those whole tokens took (rounded up), so the
        # fraction of a token already earned carries over instead of being dropped.
        self._last += -(-tokens * self._refill_ns // self.size)
        self.budget = min(self.budget + tokens, self.size)

    def reduce(self, tokens: int) -> Reduction:
        if not self.enabled:
            return Reduction.SUCCESS
        if self.one_time_burst > 0:
            if self.one_time_burst >= tokens:
                self.one_time_burst -= tokens
                self._last = self._clock()   # the bucket is still full: nothing to refill
                return Reduction.SUCCESS
            tokens -= self.one_time_burst
            self.one_time_burst = 0
        if tokens > self.budget:
            self._auto_replenish()
            if tokens > self.size:
                # Larger than the bucket can ever hold: let it through (it could never
                # pass otherwise), empty the bucket, and let the caller block for the debt.
                self.over_tokens = tokens - self.budget
                self.budget = 0
                return Reduction.OVER_CONSUMPTION
            if tokens > self.budget:
                return Reduction.FAILURE
        self.budget -= tokens
        return Reduction.SUCCESS

    def over_consumption_delay_ns(self) -> int:
        """How long the debt of the last OVER_CONSUMPTION takes to refill:
        Firecracker's ratio (over_tokens / size) times refill_time."""
        return self.over_tokens * self._refill_ns // self.size

    def force_replenish(self, tokens: int) -> None:
        """Give tokens back. During the burst phase they go back to the burst
        (capped at its initial value), as in Firecracker."""
        if not self.enabled:
            return
        if self.one_time_burst > 0:
            self.one_time_burst = min(self.one_time_burst + tokens, self.initial_one_time_burst)
            return
        self.budget = min(self.budget + tokens, self.size)

    # -- snapshots (nodesvc.vmm.snapshot) ------------------------------------------------
    def save_state(self) -> dict[str, int]:
        """Budget, burst left, and the time since the last refill (Firecracker's
        TokenBucketState): the clock is per process, so only the elapsed part travels."""
        return {"size": self.size, "refill_time_ms": self.refill_time_ms,
                "initial_one_time_burst": self.initial_one_time_burst,
                "one_time_burst": self.one_time_burst, "budget": self.budget,
                "elapsed_ns": max(0, self._clock() - self._last)}

    def restore_state(self, state: dict) -> bool:
        """Take over a saved bucket's budget if it had the same parameters (False: it was
        configured differently, and this one stays as built: full)."""
        if (state["size"], state["refill_time_ms"], state["initial_one_time_burst"]) != \
                (self.size, self.refill_time_ms, self.initial_one_time_burst):
            return False
        self.budget = max(0, min(int(state["budget"]), self.size))
        self.one_time_burst = max(0, min(int(state["one_time_burst"]),
                                         self.initial_one_time_burst))
        # Time the VM spent saved does not refill it: it resumes where it paused.
        self._last = self._clock() - min(int(state["elapsed_ns"]), self._refill_ns)
        return True

    def __repr__(self) -> str:
        return (f"TokenBucket(size={self.size}, refill_time_ms={self.refill_time_ms}, "
                f"one_time_burst={self.initial_one_time_burst}, budget={self.budget}, "
                f"burst_left={self.one_time_burst})")
