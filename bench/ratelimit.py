"""Cost of rate limiting on a device's hot path, and timer wake-up latency.

    python bench/ratelimit.py

Prints ns per consume()/consume_op() (unlimited, limited-and-passing) and the
observed delay from a failed consume() to the wake-up callback (nominal 100 ms).
"""

from __future__ import annotations

import statistics
import threading
import time

from nodesvc.plugins import PluginManager
from nodesvc.vmm.eventloop import EventLoop
from nodesvc.vmm.ratelimit import TokenType, build_rate_limiter, consume_op

N = 200_000
HUGE = {"size": 10**15, "refill_time": 1000}     # limited, but never runs dry here


def per_call_ns(fn) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(N):
        fn()
    return (time.perf_counter_ns() - t0) / N


def main() -> None:
    registry = PluginManager().rate_limiter_registry()
    lim = build_rate_limiter(registry, {"bandwidth": HUGE, "ops": HUGE}, None)
    free = build_rate_limiter(registry, {"kind": "token-bucket"}, None)
    rows = [
        ("consume_op(None, 4096)  (no limiter)", lambda: consume_op(None, 4096)),
        ("consume(4096, BYTES)    (bucket disabled)", lambda: free.consume(4096, TokenType.BYTES)),
        ("consume(4096, BYTES)    (limited, passes)", lambda: lim.consume(4096, TokenType.BYTES)),
        ("consume_op(lim, 4096)   (limited, passes)", lambda: consume_op(lim, 4096)),
    ]
    for name, fn in rows:
        print(f"{name:45s} {per_call_ns(fn):8.0f} ns/call")
    lim.close(), free.close()

    loop = EventLoop()
    loop.start()
    try:
        tight = build_rate_limiter(registry, {"ops": {"size": 1, "refill_time": 1000}}, loop)
        woke = threading.Event()
        tight.set_wakeup(woke.set)
        delays = []
        for _ in range(10):
            while tight.consume(1, TokenType.OPS):
                pass
            t0 = time.monotonic_ns()
            woke.wait(2)
            delays.append((time.monotonic_ns() - t0) / 1e6)
            woke.clear()
        tight.close()
    finally:
        loop.close()
    print(f"{'blocked -> wake-up (nominal 100 ms)':45s} median {statistics.median(delays):.1f} ms, "
          f"max {max(delays):.1f} ms")


if __name__ == "__main__":
    main()
