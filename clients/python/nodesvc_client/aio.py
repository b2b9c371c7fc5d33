"""AsyncNodeClient: the asyncio (grpc.aio) wrapper; the same methods as NodeClient, as
coroutines, and streams as AsyncStreams.

    async with AsyncNodeClient("unix:///var/lib/nodesvc/nodesvc.sock") as node:
        vm = await node.get_vm("web-1")
        async for ev in node.watch_vms(since_revision=(await node.list_vms()).revision):
            print(ev.type, ev.vm.id)
"""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nodesvc.api.v1 import nodesvc_pb2 as pb
from nodesvc.api.v1 import nodesvc_pb2_grpc as pb_grpc

from .api import Api
from .connect import Tls, make_channel, normalize_target
from .errors import NodeError
from .streams import AsyncStream


class AsyncNodeClient(Api):
    """Create inside a running event loop (grpc.aio channels belong to one loop)."""

    def __init__(self, target: str | None = None, *, tls: Tls | None = None,
                 insecure: bool = False, timeout: float | None = 60.0):
        self.target = normalize_target(target)
        self.timeout = timeout
        self.channel = make_channel(self.target, tls, insecure, aio=True)
        self.stub = pb_grpc.NodeServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "AsyncNodeClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def health(self, service: str = "", *, timeout: float | None = 5.0) -> str:
        try:
            r = await health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            raise NodeError.from_rpc_error(e) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last: NodeError | str = "no answer"
        while time.monotonic() < deadline:
            try:
                status = await self.health(
                    timeout=max(0.1, min(1.0, deadline - time.monotonic())))
                if status == "SERVING":
                    return
                last = status
            except NodeError as e:
                last = e
            await asyncio.sleep(0.05)
        raise NodeError(grpc.StatusCode.UNAVAILABLE,
                        f"node service at {self.target} not serving after {timeout:g}s "
                        f"({last})")

    async def _unary(self, method, req, post, timeout):
        try:
            resp = await getattr(self.stub, method)(req, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise NodeError.from_rpc_error(e) from None
        return post(resp)

    def _stream(self, method, req, post, timeout) -> AsyncStream:
        return AsyncStream(getattr(self.stub, method)(req, timeout=timeout), post)

    def _bidi(self, method, first, data, post, timeout) -> AsyncStream:
        async def reqs():
            yield first
            if hasattr(data, "__aiter__"):
                async for d in data:
                    if d:
                        yield pb.ConsoleInput(data=d)
            else:       # a plain iterable must not block: it runs on the event loop
                for d in data:
                    if d:
                        yield pb.ConsoleInput(data=d)
        return AsyncStream(getattr(self.stub, method)(reqs(), timeout=timeout), post)
