"""Plugin glue: registers rate-limiter kind "token-bucket" (entry point `token_bucket`)."""

from __future__ import annotations

from typing import Any, Mapping

from nodesvc.plugins import hookimpl

from .limiter import KIND, TokenBucketLimiter


def build(config: Mapping[str, Any], event_loop: Any) -> TokenBucketLimiter:
    """Factory: `config` is a parsed `rate_limiter` object; the timer joins `event_loop`."""
    return TokenBucketLimiter(config, event_loop)


@hookimpl
def register_rate_limiters(registry) -> None:
    registry.add(KIND, build)
