"""Server assembly: the node core, the gRPC server (servicer, health, reflection), its
listeners (Unix socket; TCP only with mutual TLS unless plaintext is explicitly allowed)
and graceful shutdown (VMs keep running and are re-adopted by the next start)."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..api.v1 import nodesvc_pb2 as pb
from ..api.v1 import nodesvc_pb2_grpc as pb_grpc
from ..core import Node, NodeConfig
from .errors import DomainErrorInterceptor
from .servicer import NodeServicer

log = logging.getLogger("nodesvc.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NodeService"].full_name
SUN_PATH_MAX = 107


class UsageError(Exception):
    """Bad server options (exit status 2)."""


@dataclass
class ServeOptions:
    socket: str | None = None           # default <state-dir>/nodesvc.sock
    listen: str | None = None           # HOST:PORT for TCP
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    insecure_tcp: bool = False
    metrics_listen: str | None = None   # HOST:PORT for Prometheus /metrics; None: off
    shutdown_grace_s: float = 1.0

    def check(self) -> None:
        tls = [self.tls_cert, self.tls_key, self.tls_client_ca]
        if any(tls) and not all(tls):
            raise UsageError("--tls-cert, --tls-key and --tls-client-ca go together "
                             "(mutual TLS needs all three)")
        if self.listen and not all(tls) and not self.insecure_tcp:
            raise UsageError("refusing to serve plaintext TCP on --listen: give --tls-cert, "
                             "--tls-key and --tls-client-ca, or --insecure-tcp")
        if any(tls) and not self.listen:
            raise UsageError("TLS options need --listen HOST:PORT")
        if self.metrics_listen:
            from .metrics import parse_listen
            try:
                parse_listen(self.metrics_listen)
            except ValueError as e:
                raise UsageError(str(e)) from None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


def lock_state_dir(state_dir: str) -> int:
    """One node service per state dir: two would both think they own the VMs."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(state_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(f"another node service is using {state_dir}") from None
    return fd


def add_listeners(server, opts: ServeOptions, socket_path: str) -> list[str]:
    if len(os.fsencode(socket_path)) > SUN_PATH_MAX:
        raise UsageError(f"socket path {socket_path!r} is longer than the {SUN_PATH_MAX} "
                         "bytes a Unix socket allows; pass a shorter --socket")
    if os.path.exists(socket_path):     # stale: the state-dir lock says nobody serves it
        os.unlink(socket_path)
    server.add_insecure_port(f"unix:{socket_path}")
    where = [f"unix:{socket_path}"]
    if opts.listen:
        if opts.tls_cert:
            creds = grpc.ssl_server_credentials(
                [(_read(opts.tls_key), _read(opts.tls_cert))],
                root_certificates=_read(opts.tls_client_ca), require_client_auth=True)
            port = server.add_secure_port(opts.listen, creds)
            where.append(f"{opts.listen} (mTLS, port {port})")
        else:
            port = server.add_insecure_port(opts.listen)
            where.append(f"{opts.listen} (PLAINTEXT, port {port})")
    return where


def interceptors(tracing, metrics=None) -> list:
    """Metrics and tracing (outside, so they see the status the error mapping sets) only
    when on: off, an RPC pays nothing for them."""
    outer = [metrics.interceptor()] if metrics is not None else []
    if tracing is None:
        return [*outer, DomainErrorInterceptor()]
    from .tracing import TracingInterceptor
    return [*outer, TracingInterceptor(tracing), DomainErrorInterceptor()]


async def serve(cfg: NodeConfig, opts: ServeOptions, *, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `stop` is set); raises UsageError for bad options."""
    opts.check()
    lock_fd = lock_state_dir(cfg.state_dir)
    socket_path = os.path.abspath(opts.socket or os.path.join(cfg.state_dir, "nodesvc.sock"))
    node = Node(cfg)
    metrics = None
    try:
        await node.open()
        if opts.metrics_listen:
            from .metrics import NodeMetrics, parse_listen
            metrics = NodeMetrics(node)
        server = grpc.aio.server(interceptors=interceptors(cfg.tracing, metrics))
        pb_grpc.add_NodeServiceServicer_to_server(NodeServicer(node), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        where = add_listeners(server, opts, socket_path)
        if metrics is not None:
            host, port = parse_listen(opts.metrics_listen)
            where.append(f"metrics http://{host}:{await metrics.start(host, port)}/metrics")
        await server.start()
        os.chmod(socket_path, 0o600)    # the socket's permissions are its access control
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %d VMs on %s", len(node.vms), ", ".join(where))
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set)
        await stop.wait()
        log.info("shutting down; VMs keep running")
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.stop(opts.shutdown_grace_s)
    finally:
        if metrics is not None:
            metrics.close()
        await node.close()
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        os.close(lock_fd)
