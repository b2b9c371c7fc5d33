"""nodesvc-token-bucket: Firecracker's two-bucket rate limiter, registered as kind "token-bucket"."""

from .bucket import Reduction, TokenBucket
from .limiter import KIND, REFILL_TIMER_INTERVAL_NS, TokenBucketLimiter

__all__ = ["KIND", "REFILL_TIMER_INTERVAL_NS", "Reduction", "TokenBucket", "TokenBucketLimiter"]
