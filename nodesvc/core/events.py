"""The event log: every change to every VM gets the next revision, kept in a bounded history.

Watchers resume from a revision: the retained events after it are replayed, then new ones
follow. A resume point older than the history is OUT_OF_RANGE (list again, then watch from
the list's revision). A watcher whose queue overflows is ended with Exhausted rather than
silently skipping events, so it can reconnect from the last revision it saw.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from .errors import Exhausted, OutOfRange
from .model import VmRecord, VmState

CREATED, STATE_CHANGED, DELETED, UPDATED = "CREATED", "STATE_CHANGED", "DELETED", "UPDATED"


@dataclass(frozen=True)
class Event:
    revision: int
    type: str
    vm: dict                    # VmRecord.to_json() after the change
    previous_state: VmState | None
    time: float = field(default_factory=time.time)

    @property
    def record(self) -> VmRecord:
        return VmRecord.from_json(self.vm)


class EventLog:
    def __init__(self, revision: int = 0, history: int = 1000, watcher_queue: int = 1000,
                 on_revision: Callable[[int], None] | None = None):
        self.revision = revision
        # Events at or below this revision are no longer retained (0: none ever lost).
        self.oldest_missing = revision
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        self._watchers: set[_Watcher] = set()
        self._queue_size = watcher_queue
        self._on_revision = on_revision

    def next_revision(self) -> int:
        self.revision += 1
        if self._on_revision:
            self._on_revision(self.revision)
        return self.revision

    def publish(self, ev: Event) -> None:
        if len(self._history) == self._history.maxlen:
            self.oldest_missing = self._history[0].revision
        self._history.append(ev)
        for w in list(self._watchers):
            if w.queue.full():
                w.overflowed = True     # it ends once it has drained what it has
                self._watchers.discard(w)
            else:
                w.queue.put_nowait(ev)

    async def watch(self, since: int | None = None) -> AsyncIterator[Event]:
        """Events after `since` (None: from now on), forever. Raises OutOfRange / Exhausted."""
        if since is None:
            since = self.revision
        if since > self.revision:
            raise OutOfRange(f"since_revision {since} is in the future (current revision is "
                             f"{self.revision})")
        if since < self.oldest_missing:
            raise OutOfRange(f"since_revision {since} is older than the retained history "
                             f"(events after {self.oldest_missing} are kept); list the VMs "
                             "and watch from the list's revision")
        w = _Watcher(self._queue_size)
        backlog = [e for e in self._history if e.revision > since]
        self._watchers.add(w)   # same event-loop step as the backlog copy: no gap, no repeat
        try:
            for ev in backlog:
                yield ev
            while True:
                if w.queue.empty() and w.overflowed:
                    raise Exhausted("watcher fell too far behind; resume from the last "
                                    "revision received")
                yield await w.queue.get()
        finally:
            self._watchers.discard(w)


class _Watcher:
    def __init__(self, size: int):
        self.queue: asyncio.Queue[Event] = asyncio.Queue(size)
        self.overflowed = False
