"""Firecracker's RateLimiter: a bandwidth and an ops bucket sharing one timer."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping

from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.ratelimit import TokenType, parse_limiter_config
from nodesvc.vmm.timerfd import TimerFd

from .bucket import NS_PER_MS, Clock, Reduction, TokenBucket

KIND = "token-bucket"
#: Firecracker re-checks a blocked limiter after this long (REFILL_TIMER_INTERVAL_MS).
REFILL_TIMER_INTERVAL_NS = 100 * NS_PER_MS

# timer_factory(event_loop, on_expire) -> object with arm(delay_ns) and close()
TimerFactory = Callable[[Any, Callable[[], None]], Any]


class TokenBucketLimiter:
    """Implements nodesvc.vmm.ratelimit.RateLimiter.

    Passive, like Firecracker's: buckets refill lazily inside consume(); the timer
    only exists to tell a blocked device when to retry. While blocked, every
    consume() fails without touching the buckets.
    """

    def __init__(self, config: Mapping[str, Any] | None, event_loop: Any = None, *,
                 clock: Clock = time.monotonic_ns, timer_factory: TimerFactory = TimerFd):
        parsed = parse_limiter_config(config)
        self._check_kind(parsed)
        self._clock = clock
        self._lock = threading.Lock()   # consume() may come from vCPU threads and the loop
        self._bw = self._bucket(parsed.get("bandwidth"))
        self._ops = self._bucket(parsed.get("ops"))
        self._blocked = False
        self._blocked_until = 0         # clock() when the timer fires (for snapshots)
        self._wakeup: Callable[[], None] | None = None
        self._timer = timer_factory(event_loop, self._expired)

    @staticmethod
    def _check_kind(parsed: Mapping[str, Any]) -> None:
        if parsed.get("kind", KIND) != KIND:
            raise ConfigError(f"rate_limiter.kind: a {KIND} limiter cannot become "
                              f"{parsed['kind']!r}; replace the limiter instead")

    def _bucket(self, spec: Mapping[str, int] | None) -> TokenBucket:
        if spec is None:
            return TokenBucket(0, 0, clock=self._clock)      # disabled: always passes
        return TokenBucket.from_spec(spec, clock=self._clock)

    # --- the RateLimiter contract -----------------------------------------------------

    @property
    def blocked(self) -> bool:
        return self._blocked

    def consume(self, tokens: int, token_type: TokenType) -> bool:
        with self._lock:
            if self._blocked:
                return False
            # `is`, not a dict keyed by the enum: Enum.__hash__ runs Python code per call.
            bucket = self._bw if token_type is TokenType.BYTES else self._ops
            result = bucket.reduce(tokens)
            if result is Reduction.SUCCESS:
                return True
            if result is Reduction.FAILURE:
                self._block(REFILL_TIMER_INTERVAL_NS)
                return False
            # Over-consumption: the request passes, but nothing else may until the
            # debt (over_tokens / size of a full refill) has been paid back.
            self._block(bucket.over_consumption_delay_ns())
            return True

    def manual_replenish(self, tokens: int, token_type: TokenType) -> None:
        with self._lock:
            self.bucket(token_type).force_replenish(tokens)

    def set_wakeup(self, callback: Callable[[], None] | None) -> None:
        self._wakeup = callback

    def update(self, config: Mapping[str, Any]) -> None:
        parsed = parse_limiter_config(config)
        self._check_kind(parsed)
        # Build everything first so an invalid update changes nothing.
        bw = self._bucket(parsed["bandwidth"]) if "bandwidth" in parsed else self._bw
        ops = self._bucket(parsed["ops"]) if "ops" in parsed else self._ops
        with self._lock:
            self._bw, self._ops = bw, ops   # an absent key keeps its bucket (BucketUpdate::None)

    def close(self) -> None:
        self._wakeup = None
        self._timer.close()

    # --- snapshots (nodesvc.vmm.snapshot) ------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        """Both buckets and, while blocked, how long the block had left: a throttled device
        keeps its budget (and its debt) across a restore instead of starting full."""
        with self._lock:
            left = max(1, self._blocked_until - self._clock()) if self._blocked else None
            return {"kind": KIND, "bandwidth": self._bw.save_state(),
                    "ops": self._ops.save_state(), "blocked_ns": left}

    def restore_state(self, state: Mapping[str, Any]) -> None:
        """Into a limiter built from the snapshot's config; a bucket configured differently
        since is left full. Call where the timer may be armed (the event-loop thread)."""
        if state.get("kind") != KIND:
            raise ValueError(f"saved limiter kind {state.get('kind')!r} is not {KIND!r}")
        with self._lock:
            self._bw.restore_state(state["bandwidth"])
            self._ops.restore_state(state["ops"])
            if state.get("blocked_ns"):
                self._block(int(state["blocked_ns"]))

    # --- introspection ----------------------------------------------------------------

    def bucket(self, token_type: TokenType) -> TokenBucket:
        return self._bw if token_type is TokenType.BYTES else self._ops

    def spec(self) -> dict[str, Any]:
        """The effective config, in the shape parse_limiter_config() returns."""
        out: dict[str, Any] = {"kind": KIND}
        for key, b in (("bandwidth", self._bw), ("ops", self._ops)):
            if b.enabled:
                out[key] = b.spec()
        return out

    # --- timer ------------------------------------------------------------------------

    def _block(self, delay_ns: int) -> None:
        self._blocked = True
        self._blocked_until = self._clock() + delay_ns
        self._timer.arm(delay_ns)

    def _expired(self) -> None:
        # Runs on the event-loop thread (the timer's reader callback).
        with self._lock:
            if not self._blocked:
                return
            self._blocked = False
        callback = self._wakeup
        if callback is not None:
            callback()

    def __repr__(self) -> str:
        return (f"TokenBucketLimiter(bandwidth={self._bw!r}, ops={self._ops!r}, "
                f"blocked={self._blocked})")
