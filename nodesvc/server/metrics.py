"""Prometheus metrics for the node service: `nodesvc serve --metrics-listen HOST:PORT`.

Off by default (nothing imported, no interceptor, no port). On, a scrape of
`http://HOST:PORT/metrics` reads, from objects the node already keeps:

| metric | from |
|---|---|
| `nodesvc_vms{state}` | every VM record's state |
| `nodesvc_vmm_starts_total`, `nodesvc_vmm_failures_total` | the node's event log (VMs entering STARTING / FAILED since the service started) |
| `nodesvc_vm_exits_total{vm_id,kind}`, `nodesvc_vm_kvm_seconds_total{vm_id}` | each VM's latest metrics-FIFO record |
| `nodesvc_vm_console_bytes_total`, `nodesvc_vm_console_dropped_bytes_total`, `nodesvc_vm_log_dropped_lines_total`, `nodesvc_vm_metrics_dropped_total` (`{vm_id}`) | the same record (the VMM's own counters) |
| `nodesvc_grpc_requests_total{method,code}`, `nodesvc_grpc_request_duration_seconds{method}` | a server interceptor |

Per-VM figures are those of the VMM's current (or last) run, so they reset when a VM is
started again, as Prometheus counters may. The HTTP server is prometheus-client's own, on
a thread; a scrape takes its snapshot of the node on the event-loop thread, which owns it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..core.errors import Exhausted
from ..core.events import STATE_CHANGED
from ..core.model import VmState

log = logging.getLogger("nodesvc.metrics")
# RPC latencies: sub-millisecond GetVm up to StartVm/StopVm with a grace period.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SCRAPE_TIMEOUT_S = 5.0
_VMM_COUNTERS = (("console_bytes", "nodesvc_vm_console_bytes",
                  "Console bytes the guest wrote (delivered or dropped)"),
                 ("console_dropped_bytes", "nodesvc_vm_console_dropped_bytes",
                  "Console bytes the VMM dropped because the console FIFO was full"),
                 ("log_dropped_lines", "nodesvc_vm_log_dropped_lines",
                  "VMM log lines dropped because the log FIFO was full"),
                 ("metrics_dropped", "nodesvc_vm_metrics_dropped",
                  "VMM metrics records dropped because the metrics FIFO was full"))


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (or [V6]:PORT) -> (host, port); raises ValueError with the reason."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--metrics-listen {text!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class NodeMetrics:
    def __init__(self, node):
        self.node = node
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("nodesvc_grpc_requests", "gRPC requests by method and status",
                                ["method", "code"], registry=self.registry)
        self.latency = Histogram("nodesvc_grpc_request_duration_seconds",
                                 "gRPC request handling time, until the last response",
                                 ["method"], buckets=BUCKETS, registry=self.registry)
        self.starts = Counter("nodesvc_vmm_starts", "VMs that entered STARTING (a VMM spawn)",
                              registry=self.registry)
        self.failures = Counter("nodesvc_vmm_failures", "VMs that entered FAILED",
                                registry=self.registry)
        self.registry.register(_NodeCollector(self))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: asyncio.Task | None = None
        self._http = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0: any free port); returns the bound port."""
        self._loop = asyncio.get_running_loop()
        self._watch = asyncio.create_task(self._count_events(), name="metrics-events")
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        self.port = self._http.server_port
        return self.port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._watch is not None:
            self._watch.cancel()

    async def _count_events(self) -> None:
        while True:
            try:
                async for ev in self.node.events.watch():
                    if ev.type != STATE_CHANGED:
                        continue
                    state = ev.vm["state"]
                    if state == VmState.STARTING.value:
                        self.starts.inc()
                    elif state == VmState.FAILED.value:
                        self.failures.inc()
            except Exhausted:   # fell behind a burst: go on from now, counting what follows
                log.warning("metrics: event watcher fell behind; some transitions not counted")
            except Exception:   # never silently: the counters would just stop
                log.exception("metrics: event watcher failed; restarting it")
                await asyncio.sleep(1)

    def interceptor(self) -> "MetricsInterceptor":
        return MetricsInterceptor(self)

    # -- the snapshot, taken on the event-loop thread ------------------------------------------
    async def _snapshot(self) -> dict:
        states = {s.value.lower(): 0 for s in VmState}
        vms = {}
        for vm_id, e in list(self.node.vms.items()):
            states[e.rec.state.value.lower()] += 1
            vms[vm_id] = _latest_metrics(e)
        return {"states": states, "vms": vms}

    def snapshot(self) -> dict:
        """Called on the HTTP thread."""
        fut = asyncio.run_coroutine_threadsafe(self._snapshot(), self._loop)
        return fut.result(SCRAPE_TIMEOUT_S)


def _latest_metrics(e) -> dict | None:
    for rec in reversed(e.logs.history()):
        if rec.get("kind") == "metrics":
            return rec
    return None


class _NodeCollector:
    def __init__(self, metrics: NodeMetrics):
        self.metrics = metrics

    def collect(self):
        snap = self.metrics.snapshot()
        vms = GaugeMetricFamily("nodesvc_vms", "VMs by state", labels=["state"])
        for state, n in snap["states"].items():
            vms.add_metric([state], n)
        yield vms
        exits = CounterMetricFamily("nodesvc_vm_exits", "vCPU exits of the VMM's run, by kind",
                                    labels=["vm_id", "kind"])
        kvm = CounterMetricFamily("nodesvc_vm_kvm_seconds",
                                  "vCPU time spent inside KVM_RUN (all vCPUs)", labels=["vm_id"])
        fams = {key: CounterMetricFamily(name, doc, labels=["vm_id"])
                for key, name, doc in _VMM_COUNTERS}
        for vm_id, rec in snap["vms"].items():
            if rec is None:
                continue
            for kind, n in sorted((rec.get("exits") or {}).items()):
                exits.add_metric([vm_id, kind], n)
            if rec.get("time_in_kvm") is not None:
                kvm.add_metric([vm_id], rec["time_in_kvm"])
            for key, fam in fams.items():
                if rec.get(key) is not None:
                    fam.add_metric([vm_id], rec[key])
        yield exits
        yield kvm
        yield from fams.values()


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC; sits outside DomainErrorInterceptor to see its codes."""

    def __init__(self, metrics: NodeMetrics):
        self.m = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rpartition("/")[2]
        kinds = (("unary_unary", grpc.unary_unary_rpc_method_handler),
                 ("unary_stream", grpc.unary_stream_rpc_method_handler),
                 ("stream_unary", grpc.stream_unary_rpc_method_handler),
                 ("stream_stream", grpc.stream_stream_rpc_method_handler))
        for attr, make in kinds:
            behavior = getattr(handler, attr)
            if behavior is None:
                continue
            wrap = self._stream if inspect.isasyncgenfunction(behavior) else self._unary
            return make(wrap(method, behavior), request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
        return handler

    def _done(self, method: str, t0: float, context, exc: BaseException | None) -> None:
        if isinstance(exc, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
        elif exc is not None and not isinstance(exc, (grpc.RpcError, grpc.aio.BaseError)):
            code = grpc.StatusCode.UNKNOWN      # not an abort: an unhandled exception
        else:
            code = context.code()
            if code is None:
                code = grpc.StatusCode.OK
            elif isinstance(code, int):         # grpc.aio may hand back the raw integer
                code = next((c for c in grpc.StatusCode if c.value[0] == code),
                            grpc.StatusCode.UNKNOWN)
        self.m.requests.labels(method, code.name).inc()
        self.m.latency.labels(method).observe(time.perf_counter() - t0)

    def _unary(self, method, behavior):
        async def wrapper(request, context):
            t0, exc = time.perf_counter(), None
            try:
                return await behavior(request, context)
            except BaseException as e:
                exc = e
                raise
            finally:
                self._done(method, t0, context, exc)
        return wrapper

    def _stream(self, method, behavior):
        async def wrapper(request, context):
            t0, exc = time.perf_counter(), None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as e:
                exc = e
                raise
            finally:
                self._done(method, t0, context, exc)
        return wrapper
