"""Stand-ins for what a device is given by the VMM: event loops and a rate limiter.

Single-threaded on purpose: a unit test drives the device on its own thread and
sees every callback run where and when it expects.
"""

from __future__ import annotations

import collections
import select
import time
from typing import Callable

from nodesvc.vmm.ratelimit import TokenType


class InlineLoop:
    """The event-loop surface, running `call_soon` callbacks at once; readers are only kept."""

    def __init__(self) -> None:
        self.readers: dict[int, Callable] = {}

    def add_reader(self, fd: int, cb) -> None:
        self.readers[fd] = cb

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def call_soon(self, fn) -> None:
        fn()


class ManualLoop:
    """The event-loop surface a device uses, pumped explicitly by the test (real epoll)."""

    def __init__(self) -> None:
        self.readers: dict[int, Callable] = {}
        self.soon: collections.deque = collections.deque()
        self.dispatches: collections.Counter = collections.Counter()
        self._ep = select.epoll()

    def add_reader(self, fd: int, cb) -> None:
        self.readers[fd] = cb
        self._ep.register(fd, select.EPOLLIN)

    def remove_reader(self, fd: int) -> None:
        if self.readers.pop(fd, None) is not None:
            self._ep.unregister(fd)

    def call_soon(self, fn) -> None:
        self.soon.append(fn)

    def run_once(self, timeout: float = 0.0) -> int:
        """Run queued callbacks, then readable fds' callbacks; returns how many ran."""
        ran = 0
        while self.soon:
            self.soon.popleft()()
            ran += 1
        for fd, _ in self._ep.poll(timeout):
            cb = self.readers.get(fd)
            if cb is not None:
                self.dispatches[fd] += 1
                cb(select.EPOLLIN)
                ran += 1
        return ran

    def run_until(self, pred: Callable[[], bool], timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met within %.1fs" % timeout)
            self.run_once(0.01)

    def close(self) -> None:
        self._ep.close()


class FakeLimiter:
    """The rate-limiter contract with explicit budgets per token type (None = unlimited).

    Once a consume() fails it stays blocked until `refill()`, which runs the wake-up
    (on `loop` when given, else at once — the rig is single-threaded anyway)."""

    def __init__(self, ops: int | None = None, nbytes: int | None = None, loop=None):
        self.loop, self.budget = loop, {TokenType.OPS: ops, TokenType.BYTES: nbytes}
        self.wakeup, self.updates, self.closed, self.blocked = None, [], False, False

    def consume(self, tokens: int, token_type: TokenType) -> bool:
        left = self.budget[token_type]
        if self.blocked or (left is not None and tokens > left):
            self.blocked = True
            return False
        if left is not None:
            self.budget[token_type] = left - tokens
        return True

    def manual_replenish(self, tokens: int, token_type: TokenType) -> None:
        if self.budget[token_type] is not None:
            self.budget[token_type] += tokens

    def set_wakeup(self, cb) -> None:
        self.wakeup = cb

    def update(self, config) -> None:
        self.updates.append(config)

    def close(self) -> None:
        self.closed = True

    def refill(self, ops: int | None = None, nbytes: int | None = None) -> None:
        self.budget = {TokenType.OPS: ops, TokenType.BYTES: nbytes}
        self.blocked = False
        if self.wakeup is not None:
            (self.loop.call_soon if self.loop is not None else lambda f: f())(self.wakeup)
