"""NodeClient: the synchronous wrapper.

    with NodeClient("unix:///var/lib/nodesvc/nodesvc.sock") as node:
        node.create_vm("web-1", {"machine": {"vcpus": 2, "memory_mib": 256},
                                 "boot": {"kernel_path": "/srv/vmlinux"}}, start=True)
        for chunk in node.stream_console("web-1", include_history=True):
            sys.stdout.buffer.write(chunk)
"""

from __future__ import annotations

import itertools
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nodesvc.api.v1 import nodesvc_pb2 as pb
from nodesvc.api.v1 import nodesvc_pb2_grpc as pb_grpc

from .api import Api
from .connect import Tls, make_channel, normalize_target
from .errors import NodeError
from .streams import Stream

SERVING = health_pb2.HealthCheckResponse.SERVING


class NodeClient(Api):
    """A connection to one node service. `target`: 'unix:///path', a socket path, or
    'host:port' (with `tls`, or insecure=True for plaintext). `timeout`: default deadline
    in seconds for unary calls (streams have none)."""

    def __init__(self, target: str | None = None, *, tls: Tls | None = None,
                 insecure: bool = False, timeout: float | None = 60.0):
        self.target = normalize_target(target)
        self.timeout = timeout
        self.channel = make_channel(self.target, tls, insecure)
        self.stub = pb_grpc.NodeServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "NodeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def health(self, service: str = "", *, timeout: float | None = 5.0) -> str:
        """The standard gRPC health status ('SERVING', 'NOT_SERVING', ...)."""
        try:
            r = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            raise NodeError.from_rpc_error(e) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the service reports SERVING; NodeError(UNAVAILABLE) after `timeout`."""
        deadline = time.monotonic() + timeout
        last: NodeError | str = "no answer"
        while time.monotonic() < deadline:
            try:
                status = self.health(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
                if status == "SERVING":
                    return
                last = status
            except NodeError as e:
                last = e
            time.sleep(0.05)
        raise NodeError(grpc.StatusCode.UNAVAILABLE,
                        f"node service at {self.target} not serving after {timeout:g}s "
                        f"({last})")

    # -- the three call shapes Api needs ----------------------------------------------------
    def _unary(self, method, req, post, timeout):
        try:
            resp = getattr(self.stub, method)(req, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise NodeError.from_rpc_error(e) from None
        return post(resp)

    def _stream(self, method, req, post, timeout) -> Stream:
        return Stream(getattr(self.stub, method)(req, timeout=timeout), post)

    def _bidi(self, method, first, data, post, timeout) -> Stream:
        # gRPC drains this iterator in its own thread; a blocking `data` is fine here.
        reqs = itertools.chain([first], (pb.ConsoleInput(data=d) for d in data if d))
        return Stream(getattr(self.stub, method)(reqs, timeout=timeout), post)
