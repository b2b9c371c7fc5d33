"""A small asyncio etcd v3 client: KV, transactions, leases and watches over grpc.aio.

The wire messages and stubs come from `etcd3aio` (its generated etcd API modules and nothing
else); the semantics the fleet depends on are ours and written here (docs/fleet.md says why):
  - every unary call has a short deadline and idempotent ones are retried: when the etcd
    leader dies, a follower silently drops the proposals it forwarded, so only a deadline
    ends them. A transaction is retried only when the caller says it may be (a retried txn
    whose first attempt committed fails its own compare: such callers re-read and decide);
  - a keep-alive reports the monotonic time its request was *sent*: the lease cannot expire
    on the server before sent + granted TTL, which is the bound node-side fencing uses;
  - a watch resumes after a broken stream from the last event it delivered (not from the
    response header, which can run ahead of the events while etcd catches a watcher up) and
    raises `Compacted` instead of silently skipping history.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

import grpc
from etcd3aio.proto.etcd.api.etcdserverpb import rpc_pb2 as rpc
from etcd3aio.proto.etcd.api.etcdserverpb import rpc_pb2_grpc as rpc_grpc

log = logging.getLogger("nodesvc.fleet.etcd")
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
PUT, DELETE = 0, 1          # mvccpb.Event.EventType


class EtcdError(Exception):
    """etcd could not be reached or refused the request."""


class Compacted(EtcdError):
    """The watch's start revision is older than etcd's compacted history: list again."""

    def __init__(self, revision: int):
        super().__init__(f"revision compacted (oldest kept: {revision})")
        self.revision = revision


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    @classmethod
    def of(cls, kv) -> "KV":
        return cls(kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.lease)


@dataclass(frozen=True)
class Event:
    type: int           # PUT or DELETE
    kv: KV              # for DELETE: key and mod_revision (the deletion's revision) only


def prefix_end(prefix: bytes) -> bytes:
    """The range end that makes [prefix, end) cover every key starting with prefix."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"


def target_of(endpoints: Sequence[str]) -> str:
    """One gRPC target balancing over every member: ipv4:/ipv6: lists need literal addresses;
    a single name uses DNS (which may return several)."""
    hosts = []
    for ep in endpoints:
        ep = ep.split("://", 1)[-1].rstrip("/")
        host, _, port = ep.rpartition(":")
        hosts.append((host.strip("[]"), port))
    try:
        fam = {ipaddress.ip_address(h).version for h, _ in hosts}
    except ValueError:
        if len(hosts) != 1:
            raise EtcdError("several etcd endpoints must be IP addresses (or give one DNS "
                            f"name that resolves to all members): {list(endpoints)}") from None
        return f"dns:///{hosts[0][0]}:{hosts[0][1]}"
    if fam == {4}:
        return "ipv4:" + ",".join(f"{h}:{p}" for h, p in hosts)
    return "ipv6:" + ",".join(f"[{h}]:{p}" for h, p in hosts)


# Compare/op builders (thin, so call sites read like the etcd docs).
def cmp_create(key: str, rev: int, result=rpc.Compare.EQUAL) -> rpc.Compare:
    return rpc.Compare(key=key.encode(), target=rpc.Compare.CREATE, result=result,
                       create_revision=rev)


def cmp_mod(key: str, rev: int, result=rpc.Compare.EQUAL) -> rpc.Compare:
    return rpc.Compare(key=key.encode(), target=rpc.Compare.MOD, result=result,
                       mod_revision=rev)


def op_put(key: str, value: bytes, lease: int = 0) -> rpc.RequestOp:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key.encode(), value=value, lease=lease))


def op_delete(key: str) -> rpc.RequestOp:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key.encode()))


def op_get(key: str) -> rpc.RequestOp:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key.encode()))


class Etcd:
    """One channel to the cluster (round robin over the members; a dead member is skipped
    by the balancer). Create inside the event loop that uses it."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 1.5,
                 tls: tuple[bytes, bytes | None, bytes | None] | None = None):
        self.endpoints = list(endpoints)
        self.timeout = timeout
        opts = [("grpc.lb_policy_name", "round_robin"),
                ("grpc.keepalive_time_ms", 2000), ("grpc.keepalive_timeout_ms", 2000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000)]
        target = target_of(self.endpoints)
        if tls:
            ca, key, cert = tls
            creds = grpc.ssl_channel_credentials(ca, key, cert)
            self.channel = grpc.aio.secure_channel(target, creds, options=opts)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=opts)
        self.kv = rpc_grpc.KVStub(self.channel)
        self.leases = rpc_grpc.LeaseStub(self.channel)
        self.watcher = rpc_grpc.WatchStub(self.channel)
        self.ops = 0    # requests sent (the benchmark's "etcd operations")

    async def close(self) -> None:
        await self.channel.close()

    async def _call(self, fn, req, *, retries: int = 0, timeout: float | None = None):
        for attempt in range(retries + 1):
            self.ops += 1
            try:
                return await fn(req, timeout=timeout or self.timeout)
            except grpc.aio.AioRpcError as e:
                if e.code() not in TRANSIENT or attempt == retries:
                    raise EtcdError(f"{e.code().name}: {e.details()}") from None
            await asyncio.sleep(0.05 * (attempt + 1))

    async def get(self, key: str) -> KV | None:
        r = await self._call(self.kv.Range, rpc.RangeRequest(key=key.encode()), retries=2)
        return KV.of(r.kvs[0]) if r.kvs else None

    async def range(self, prefix: str) -> tuple[list[KV], int]:
        p = prefix.encode()
        r = await self._call(self.kv.Range, rpc.RangeRequest(key=p, range_end=prefix_end(p)),
                             retries=2)
        return [KV.of(kv) for kv in r.kvs], r.header.revision

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        r = await self._call(self.kv.Put, rpc.PutRequest(key=key.encode(), value=value,
                                                         lease=lease), retries=2)
        return r.header.revision

    async def delete(self, key: str) -> int:
        r = await self._call(self.kv.DeleteRange, rpc.DeleteRangeRequest(key=key.encode()),
                             retries=2)
        return r.deleted

    async def txn(self, compare, success, failure=(), *, retries: int = 0) -> rpc.TxnResponse:
        return await self._call(self.kv.Txn, rpc.TxnRequest(
            compare=list(compare), success=list(success), failure=list(failure)),
            retries=retries)

    async def grant(self, ttl: int) -> tuple[int, int]:
        r = await self._call(self.leases.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl),
                             retries=2)    # a lost extra lease just expires
        if r.error:
            raise EtcdError(f"lease grant: {r.error}")
        return r.ID, r.TTL

    async def revoke(self, lease: int) -> None:
        try:
            await self._call(self.leases.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease),
                             retries=1)
        except EtcdError as e:
            if "not found" not in str(e):
                raise

    async def keepalive(self, lease: int, timeout: float | None = None) -> tuple[float, int]:
        """Renew once: (monotonic time the request was sent, TTL granted; 0 = lease gone)."""
        async def one():
            yield rpc.LeaseKeepAliveRequest(ID=lease)
        sent = time.monotonic()
        self.ops += 1
        call = self.leases.LeaseKeepAlive(one(), timeout=timeout or self.timeout)
        try:
            async for r in call:
                return sent, r.TTL
        except grpc.aio.AioRpcError as e:
            raise EtcdError(f"keepalive: {e.code().name}: {e.details()}") from None
        finally:
            call.cancel()
        raise EtcdError("keepalive: stream ended without an answer")

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        """Events under prefix from start_revision on, in batches (one etcd revision never
        splits across batches). Reconnects on transient errors; raises Compacted."""
        p = prefix.encode()
        next_rev = start_revision
        backoff = 0.05
        while True:
            stop = asyncio.Event()

            async def reqs(rev=next_rev):
                yield rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                    key=p, range_end=prefix_end(p), start_revision=rev))
                await stop.wait()
            self.ops += 1
            call = self.watcher.Watch(reqs())
            try:
                async for r in call:
                    if r.compact_revision:
                        raise Compacted(r.compact_revision)
                    if r.canceled:
                        raise EtcdError(f"watch canceled: {r.cancel_reason}")
                    backoff = 0.05
                    if r.events:
                        evs = [Event(e.type, KV.of(e.kv)) for e in r.events]
                        next_rev = evs[-1].kv.mod_revision + 1
                        yield evs
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None,
                                           "watch stream ended")
            except grpc.aio.AioRpcError as e:
                if e.code() not in TRANSIENT and e.code() != grpc.StatusCode.CANCELLED:
                    raise EtcdError(f"watch: {e.code().name}: {e.details()}") from None
                log.debug("watch %s: %s; resuming at %d", prefix, e.code().name, next_rev)
            finally:
                stop.set()
                call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(1.0, backoff * 2)
