"""An in-memory copy of everything under the fleet prefix, kept current by one watch.

List at revision R, watch from R+1: nothing is missed (etcd's list-then-watch contract). On
compaction (or any watch failure) the mirror lists again. Readers see a consistent view as of
`revision`; `changed` is set after every applied batch so loops can wait for news.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from .etcd import DELETE, KV, Compacted, Etcd, EtcdError

log = logging.getLogger("nodesvc.fleet.mirror")


class Mirror:
    def __init__(self, etcd: Etcd, prefix: str,
                 on_events: Callable[[list], None] | None = None):
        self.etcd, self.prefix = etcd, prefix
        self.kvs: dict[str, KV] = {}
        self.revision = 0
        self.synced = asyncio.Event()
        self.changed = asyncio.Event()
        self.on_events = on_events

    def under(self, sub: str) -> dict[str, KV]:
        p = self.prefix + sub
        return {k[len(p):]: v for k, v in self.kvs.items() if k.startswith(p)}

    def get(self, key: str) -> KV | None:
        return self.kvs.get(key)

    async def run(self) -> None:
        """Forever: list, then follow; re-list after compaction or errors."""
        while True:
            try:
                kvs, rev = await self.etcd.range(self.prefix)
                self.kvs = {kv.key: kv for kv in kvs}
                self.revision = rev
                self.synced.set()
                self.changed.set()
                if self.on_events:
                    self.on_events([])
                async for evs in self.etcd.watch(self.prefix, rev + 1):
                    for ev in evs:
                        if ev.type == DELETE:
                            self.kvs.pop(ev.kv.key, None)
                        else:
                            self.kvs[ev.kv.key] = ev.kv
                    self.revision = evs[-1].kv.mod_revision
                    self.changed.set()
                    if self.on_events:
                        self.on_events(evs)
            except Compacted as e:
                log.info("mirror %s: %s; listing again", self.prefix, e)
            except EtcdError as e:
                log.warning("mirror %s: %s; retrying", self.prefix, e)
                await asyncio.sleep(0.5)

    async def wait_changed(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self.changed.clear()
