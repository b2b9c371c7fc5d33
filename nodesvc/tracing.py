"""OpenTelemetry tracing for the node service (never imported by the VMM process).

Off by default, and then free: `setup()` returns None, no interceptor is installed, the
core skips every tracing branch and `opentelemetry` is not even imported. On, a `Tracing`
owns its TracerProvider and exporter:

    none     no tracing (default)
    console  span JSON on stdout (batched, so the event loop never waits on the terminal)
    otlp     OTLP/gRPC to a collector (`--otlp-endpoint`, else OTEL_EXPORTER_OTLP_[TRACES_]
             ENDPOINT, default http://localhost:4317); needs opentelemetry-exporter-otlp-proto-grpc
    memory   in-process InMemorySpanExporter, for tests (`Tracing.in_memory()`)

The exporter comes from `nodesvc serve --trace-exporter`, else OTEL_TRACES_EXPORTER;
OTEL_SDK_DISABLED=true turns tracing off; OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
OTEL_TRACES_SAMPLER, OTEL_PROPAGATORS, OTEL_BSP_* and OTEL_EXPORTER_OTLP_* work as usual.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager, nullcontext
from typing import Mapping

EXPORTERS = ("none", "console", "otlp")
TRACER_NAME = "nodesvc"


class TracingError(Exception):
    """Bad tracing options (the OTLP exporter is not installed, an unknown exporter)."""


def exporter_choice(flag: str | None, env: Mapping[str, str] = os.environ) -> str:
    """The exporter to use: the flag wins, then OTEL_TRACES_EXPORTER; default "none"."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    if flag:
        return flag
    # The spec allows a comma-separated list; we run one exporter, the first one we know.
    for name in env.get("OTEL_TRACES_EXPORTER", "").split(","):
        if name.strip().lower() in EXPORTERS:
            return name.strip().lower()
    return "none"


def setup(exporter: str | None = None, otlp_endpoint: str | None = None, *,
          set_global: bool = False) -> "Tracing | None":
    """A `Tracing` for the chosen exporter, or None when tracing is off."""
    choice = exporter_choice(exporter if exporter or not otlp_endpoint else "otlp")
    if choice == "none":
        return None
    if choice == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter
        span_exporter = ConsoleSpanExporter(service_name=None)
    elif choice == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TracingError("--trace-exporter otlp needs the opentelemetry-exporter-otlp-"
                               "proto-grpc package") from None
        span_exporter = OTLPSpanExporter(endpoint=otlp_endpoint) if otlp_endpoint \
            else OTLPSpanExporter()
    else:
        raise TracingError(f"unknown trace exporter {choice!r} (one of {', '.join(EXPORTERS)})")
    return Tracing(span_exporter, batch=True, set_global=set_global)


class Tracing:
    """A tracer provider and the helpers the server and the core use."""

    def __init__(self, span_exporter, *, batch: bool = True, set_global: bool = False):
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        attrs = {"service.version": _version()}
        if not os.environ.get("OTEL_SERVICE_NAME"):     # the env var wins over our default
            attrs["service.name"] = "nodesvc"
        self.provider = TracerProvider(resource=Resource.create(attrs))
        self.exporter = span_exporter
        processor = BatchSpanProcessor if batch else SimpleSpanProcessor
        self.provider.add_span_processor(processor(span_exporter))
        if set_global:      # plugins and libraries using the global API join our traces
            trace.set_tracer_provider(self.provider)
        self.tracer = self.provider.get_tracer(TRACER_NAME)
        self._trace = trace

    @classmethod
    def in_memory(cls) -> "Tracing":
        """Spans kept in `self.exporter.get_finished_spans()`, exported synchronously."""
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter)
        return cls(InMemorySpanExporter(), batch=False)

    def shutdown(self) -> None:
        self.provider.shutdown()    # flushes what the batch processor still holds

    # -- helpers for the core --------------------------------------------------------------
    @contextmanager
    def vmm_start(self, vm_id: str):
        """The `vmm.start` span (child of the current RPC span): spawn to guest running."""
        with self.tracer.start_as_current_span(
                "vmm.start", attributes={"nodesvc.vm_id": vm_id},
                record_exception=True, set_status_on_exception=True) as span:
            yield VmmStartTrace(self, span)

    def add_spans(self, parent_ctx, records, *, spawn_ns: int | None = None) -> None:
        """Child spans of `parent_ctx` (an OTel Context) from VMM span records."""
        for r in records or ():
            try:
                name, t0, t1 = str(r["name"]), int(r["start_ns"]), int(r["end_ns"])
            except (KeyError, TypeError, ValueError):
                continue    # a VMM bug must not break the RPC
            if name == "vmm.spawn" and spawn_ns is not None:
                t0 = spawn_ns   # exec starts on our side; the VMM only knows its main()
            attrs = {k: v for k, v in (r.get("attributes") or {}).items()
                     if isinstance(v, (str, bool, int, float))}
            span = self.tracer.start_span(name, context=parent_ctx, start_time=t0,
                                          attributes=attrs)
            span.end(end_time=max(t0, t1))

    def late_spans(self, event: dict) -> None:
        """Spans a VMM reports after the RPC ended (boot-timer), under the span it was
        given as "trace" when it started (so this works after a node restart too)."""
        traceparent = event.get("trace")
        if not traceparent:
            return
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator)
        ctx = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        self.add_spans(ctx, event.get("spans"))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("nodesvc")
    except PackageNotFoundError:
        return "unknown"


def vmm_start(tracing: Tracing | None, vm_id: str):
    """Context manager for start_vm: a `VmmStartTrace`, or a no-op one when tracing is off."""
    return tracing.vmm_start(vm_id) if tracing is not None else nullcontext(NO_TRACE)


class _NoTrace:
    traceparent = None

    def before_spawn(self) -> None:
        pass

    def spawned(self, pid: int) -> None:
        pass

    def started(self, result: dict) -> None:
        pass


NO_TRACE = _NoTrace()


class VmmStartTrace(_NoTrace):
    """What start_vm needs while its `vmm.start` span is open."""

    def __init__(self, tracing: Tracing, span):
        self.tracing, self.span = tracing, span
        self.spawn_ns: int | None = None

    def before_spawn(self) -> None:
        self.spawn_ns = time.time_ns()

    def spawned(self, pid: int) -> None:
        self.span.set_attribute("nodesvc.vmm_pid", pid)

    @property
    def traceparent(self) -> str:
        """W3C traceparent of `vmm.start`, for the VMM's start request."""
        c = self.span.get_span_context()
        return f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}"

    def started(self, result: dict) -> None:
        ctx = self.tracing._trace.set_span_in_context(self.span)
        self.tracing.add_spans(ctx, result.get("timeline"), spawn_ns=self.spawn_ns)
