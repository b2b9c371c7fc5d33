"""Rate limiters: the contract devices rely on, the JSON config, and the plugin lookup.

The VMM core knows no limiter algorithm. A limiter kind is provided by a plugin
(`register_rate_limiters` hook, `registry.add(kind, factory)`); the default kind,
"token-bucket", ships as the `nodesvc-token-bucket` distribution. Devices use a
limiter passively, as Firecracker's do: before doing a request they `consume()`
tokens; on False they stop processing that queue and wait for the wake-up
callback, which the limiter runs on the event-loop thread when it can be retried.

Config is Firecracker's `rate_limiter` object, parsed strictly:

    {"bandwidth": {"size": 1048576, "one_time_burst": 0, "refill_time": 1000},
     "ops":       {"size": 100, "refill_time": 1000},
     "kind": "token-bucket"}            # nodesvc extension; optional
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from .errors import ConfigError

DEFAULT_KIND = "token-bucket"
U64_MAX = 2**64 - 1
# Firecracker keeps refill_time in ns as a u64; longer refill times cannot be represented.
MAX_REFILL_TIME_MS = U64_MAX // 1_000_000

_BUCKET_KEYS = ("size", "one_time_burst", "refill_time")
_LIMITER_KEYS = ("bandwidth", "ops", "kind")


class TokenType(enum.Enum):
    """Which bucket a consume() draws from. Values are the config keys."""
    BYTES = "bandwidth"
    OPS = "ops"


@runtime_checkable
class RateLimiter(Protocol):
    """What a device may call. All methods are cheap and never block.

    Callable from vCPU threads and the event-loop thread alike; implementations
    serialise internally. The wake-up callback always runs on the event-loop thread.
    """

    @property
    def blocked(self) -> bool:
        """True from a failed (or over-consuming) consume() until the limiter's timer fires."""

    def consume(self, tokens: int, token_type: TokenType) -> bool:
        """Take `tokens` now. False: not possible now — the limiter is (or became)
        blocked and has armed its own wake-up; the device stops that queue.
        A disabled/unconfigured bucket always succeeds unless the limiter is blocked."""

    def manual_replenish(self, tokens: int, token_type: TokenType) -> None:
        """Give back tokens taken for a request that was not done after all."""

    def set_wakeup(self, callback: Callable[[], None] | None) -> None:
        """`callback()` runs on the event-loop thread each time a blocked limiter unblocks."""

    def update(self, config: Mapping[str, Any]) -> None:
        """Replace buckets on a running VM (Firecracker PATCH): a bucket key absent or
        null keeps that bucket; size or refill_time 0 disables it; otherwise it is
        replaced by a new, full bucket. Raises ConfigError (state unchanged) if invalid."""

    def close(self) -> None:
        """Release the timer. Idempotent. The device calls it from its own close()."""


# --- config ---------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)   # JSON true is not 1


def _check_object(path: str, obj: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{path}: must be an object, got {type(obj).__name__}")
    for key in obj:
        if key not in allowed:
            raise ConfigError(f"{path}.{key}: unknown key; allowed: {', '.join(allowed)}")


def _parse_bucket(path: str, obj: Any) -> dict[str, int]:
    _check_object(path, obj, _BUCKET_KEYS)
    out = {}
    for key in _BUCKET_KEYS:
        v = obj.get(key)
        if v is None:
            if key == "one_time_burst":     # Option<u64> in Firecracker; 0 = none
                out[key] = 0
                continue
            raise ConfigError(f"{path}.{key}: required key is missing")
        if not _is_int(v):
            raise ConfigError(f"{path}.{key}: must be an integer, got {v!r}")
        limit = MAX_REFILL_TIME_MS if key == "refill_time" else U64_MAX
        if not 0 <= v <= limit:
            raise ConfigError(f"{path}.{key}: must be between 0 and {limit}, got {v}")
        out[key] = v
    return out


def parse_limiter_config(obj: Any, path: str = "rate_limiter") -> dict[str, Any]:
    """Validate a `rate_limiter` object; return it normalised.

    The result holds only the keys that were given with a non-null value ("kind",
    "bandwidth", "ops"); each bucket has all of size, one_time_burst, refill_time.
    None parses to {}. Parsing a parsed config returns an equal dict.
    """
    if obj is None:
        return {}
    _check_object(path, obj, _LIMITER_KEYS)
    out: dict[str, Any] = {}
    kind = obj.get("kind")
    if kind is not None:
        if not isinstance(kind, str) or not kind:
            raise ConfigError(f"{path}.kind: must be a non-empty string, got {kind!r}")
        out["kind"] = kind
    for key in ("bandwidth", "ops"):
        if obj.get(key) is not None:
            out[key] = _parse_bucket(f"{path}.{key}", obj[key])
    return out


def bucket_enabled(spec: Mapping[str, int] | None) -> bool:
    """Firecracker: a bucket with size 0 or refill_time 0 does not limit."""
    return bool(spec) and spec["size"] > 0 and spec["refill_time"] > 0


# --- construction ---------------------------------------------------------------------

def build_rate_limiter(registry, config: Any, event_loop: Any,
                       *, path: str = "rate_limiter") -> RateLimiter | None:
    """Build the limiter a device's `rate_limiter` config asks for, or None.

    None when the config is absent or names neither a bucket nor a kind (Firecracker
    treats a limiter without buckets as none). An explicit "kind" always builds, so a
    token bucket without buckets yet can be enabled later with update().
    """
    parsed = parse_limiter_config(config, path)
    if not parsed:
        return None
    kind = parsed.get("kind", DEFAULT_KIND)
    if kind not in registry:
        known = ", ".join(registry.kinds()) or "none"
        raise ConfigError(f"{path}.kind: no loaded plugin provides rate-limiter kind "
                          f"{kind!r} (known: {known})")
    return registry.get(kind)(parsed, event_loop)


def limiter_builder(registry, event_loop) -> Callable[[Any], RateLimiter | None]:
    """The callable the VMM puts in DeviceContext.rate_limiter."""
    return lambda config, path="rate_limiter": build_rate_limiter(
        registry, config, event_loop, path=path)


# --- device helpers (Firecracker's devices do exactly this per request) ---------------

def consume_op(limiter: RateLimiter | None, nbytes: int) -> bool:
    """Pay one op and `nbytes` bytes for a request, or nothing at all.

    Ops first; if the bytes can't be paid the op is given back, so a retried
    request is not charged twice for its op.
    """
    if limiter is None:
        return True
    if not limiter.consume(1, TokenType.OPS):
        return False
    if nbytes and not limiter.consume(nbytes, TokenType.BYTES):
        limiter.manual_replenish(1, TokenType.OPS)
        return False
    return True


def replenish_op(limiter: RateLimiter | None, nbytes: int) -> None:
    """Undo consume_op() for a request that could not be done (e.g. no rx buffer)."""
    if limiter is not None:
        limiter.manual_replenish(1, TokenType.OPS)
        limiter.manual_replenish(nbytes, TokenType.BYTES)


class OneLimiter:
    """The RateLimited capability of a device with one limiter on queue 0 (blk, rng).

    The device calls `_init_limiter()` from its constructor, charges requests with
    `_consume(nbytes)`, and says by `_resumable()` whether queue 0 may run now; a
    limiter's wake-up (event-loop thread) re-runs the queue through `resume_queue(0)`.
    `_limiter_owner` names the device in errors ("entropy", "drives[rootfs]").
    """

    _limiter_owner = "device"
    _one_limiter = "the device has"

    def _init_limiter(self, limiter, limiter_builder, event_loop) -> None:
        self._limiter_builder, self._loop = limiter_builder, event_loop
        self.limiter = None
        self._set_limiter(limiter)

    def _resumable(self) -> bool:
        raise NotImplementedError

    def _consume(self, nbytes: int) -> bool:
        """One op, plus the data bytes."""
        return consume_op(self.limiter, nbytes)

    def _set_limiter(self, limiter) -> None:
        if limiter is not None:
            limiter.set_wakeup(self._wakeup)
        self.limiter = limiter

    def _wakeup(self) -> None:
        """The limiter unblocked (event-loop thread): resume where we stopped."""
        if self._resumable():
            self.resume_queue(0)

    def update_rate_limiter(self, config, which: str | None = None) -> None:
        """Adjust or add the limiter on a running VM (Firecracker's PATCH /drives, /entropy)."""
        owner = self._limiter_owner
        if which is not None:
            raise ConfigError(f"{owner}: {self._one_limiter} one rate limiter, not {which!r}")
        parsed = parse_limiter_config(config, f"{owner}.rate_limiter")
        if self.limiter is not None:
            self.limiter.update(config)
        elif parsed and self._limiter_builder is not None:
            self._set_limiter(self._limiter_builder(config))
        # requests may be parked behind the old limits: retry them on the loop thread
        if self._loop is not None:
            self._loop.call_soon(self._wakeup)
        else:
            self._wakeup()
