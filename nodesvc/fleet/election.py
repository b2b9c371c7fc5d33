"""Controller leadership: one key under a lease, won by a create-if-absent transaction.

The leader key's create_revision is the leader's *term*. Every write the leader makes is a
transaction that also compares `create_revision(leader) == term`, so a deposed leader (its
lease expired while it was paused, say) has its writes refused by etcd itself; it does not
need to know in time that it lost. Locally a leader stops acting `margin` before its lease
could expire (the same send-time + TTL bound as node fencing), and campaigns again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .etcd import Etcd, EtcdError, cmp_create, op_put

log = logging.getLogger("nodesvc.fleet.election")


class Leadership:
    def __init__(self, etcd: Etcd, key: str, identity: str, ttl: int = 5):
        self.etcd, self.key, self.identity, self.ttl = etcd, key, identity, ttl
        self.margin = max(0.5, ttl / 4)
        self.lease = 0
        self.term = 0               # create_revision of our leader key; 0 = not leading
        self.deadline = 0.0
        self.changed = asyncio.Event()

    def leading(self) -> bool:
        return self.term != 0 and time.monotonic() < self.deadline - self.margin

    def guard(self):
        """The compare every leader write carries."""
        return cmp_create(self.key, self.term)

    async def run(self) -> None:
        """Forever: campaign, lead while the lease lives, step down, campaign again."""
        while True:
            try:
                await self._campaign()
                await self._hold()
            except EtcdError as e:
                log.warning("election: %s", e)
            self._step_down()
            await asyncio.sleep(0.2)

    async def _campaign(self) -> None:
        if not self.lease:
            sent = time.monotonic()
            self.lease, ttl = await self.etcd.grant(self.ttl)
            self.deadline = sent + ttl
        while True:
            r = await self.etcd.txn([cmp_create(self.key, 0)],
                                    [op_put(self.key, self.identity.encode(), self.lease)],
                                    retries=2)
            term = r.header.revision if r.succeeded else 0
            if not r.succeeded:     # ours, if a timed-out first attempt did commit
                kv = await self.etcd.get(self.key)
                term = kv.create_revision if kv is not None and kv.lease == self.lease else 0
            if term:
                self.term = term
                await self._renew()
                log.info("election: %s leads (term %d)", self.identity, self.term)
                self.changed.set()
                return
            # Someone leads: keep our lease alive while waiting, so winning is instant.
            await self._renew()
            await asyncio.sleep(min(0.5, self.ttl / 6))

    async def _renew(self) -> tuple[float, int]:
        sent, ttl = await self.etcd.keepalive(self.lease, timeout=max(0.1, self.ttl / 4))
        if ttl <= 0:
            self.lease = 0
            raise EtcdError("our lease expired")
        self.deadline = sent + ttl
        return sent, ttl

    async def _hold(self) -> None:
        interval = max(0.2, self.ttl / 4)
        while True:
            if time.monotonic() >= self.deadline - self.margin:
                raise EtcdError("lost contact with etcd for too long")
            try:
                await self._renew()
                kv = await self.etcd.get(self.key)
            except EtcdError as e:
                if not self.lease:
                    raise
                log.warning("election: keep-alive: %s", e)
                kv = False
            if kv is None or (kv and kv.create_revision != self.term):
                raise EtcdError("leader key is gone")
            await asyncio.sleep(interval)

    def _step_down(self) -> None:
        if self.term:
            log.warning("election: %s steps down (term %d)", self.identity, self.term)
            self.term = 0
            self.changed.set()

    async def resign(self) -> None:
        if self.lease:
            try:
                await self.etcd.revoke(self.lease)
            except EtcdError:
                pass
        self.lease = 0
        self._step_down()
