"""Fan-out of a VM's console bytes or log records to any number of subscribers.

The publisher (the FIFO reader) never waits: each subscriber has a bounded backlog, and
what does not fit is dropped and counted for that subscriber only. A bounded history lets
late subscribers see what came before (the boot). Closing the fan-out ends every
subscription once it has drained; a new run of the VM gets a new fan-out.
"""

from __future__ import annotations

import asyncio
import collections
from typing import AsyncIterator, Callable, Generic, TypeVar

T = TypeVar("T")


class _Sub(Generic[T]):
    def __init__(self, limit: int):
        self.items: collections.deque[T] = collections.deque()
        self.size = 0
        self.limit = limit
        self.dropped = 0
        self.wake = asyncio.Event()


class Fanout(Generic[T]):
    """`size(item)` measures items: `len` for bytes, 1 for records."""

    def __init__(self, history: int, backlog: int, size: Callable[[T], int] = len):
        self._size = size
        self._history: collections.deque[T] = collections.deque()
        self._history_size = 0
        self.history_limit, self.backlog_limit = history, backlog
        self._subs: set[_Sub[T]] = set()
        self.closed = False
        self.published = 0

    def publish(self, item: T) -> None:
        n = self._size(item)
        self.published += n
        self._history.append(item)
        self._history_size += n
        while self._history_size > self.history_limit and len(self._history) > 1:
            self._history_size -= self._size(self._history.popleft())
        for s in self._subs:
            if s.size + n > s.limit:
                s.dropped += n
            else:
                s.items.append(item)
                s.size += n
            s.wake.set()

    def history(self) -> list[T]:
        return list(self._history)

    def close(self) -> None:
        self.closed = True
        for s in self._subs:
            s.wake.set()

    async def subscribe(self, include_history: bool = False) -> AsyncIterator[tuple[list[T], int]]:
        """Batches of (items, dropped since the previous batch) until closed and drained."""
        sub: _Sub[T] = _Sub(self.backlog_limit)
        if include_history and self._history:
            first = self.history()      # taken in the same step as registering: no gap
        else:
            first = []
        self._subs.add(sub)
        try:
            if first:
                yield first, 0
            while True:
                if not sub.items:
                    if self.closed:
                        if sub.dropped:
                            yield [], sub.dropped
                        return
                    sub.wake.clear()
                    await sub.wake.wait()
                    continue
                items, dropped = list(sub.items), sub.dropped
                sub.items.clear()
                sub.size = sub.dropped = 0
                yield items, dropped
        finally:
            self._subs.discard(sub)


def byte_fanout(history: int = 64 << 10, backlog: int = 1 << 20) -> Fanout[bytes]:
    return Fanout(history, backlog, len)


def record_fanout(history: int = 500, backlog: int = 2000) -> Fanout[dict]:
    return Fanout(history, backlog, lambda _: 1)
