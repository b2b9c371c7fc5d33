"""A span per RPC: a small grpc.aio server interceptor (installed only when tracing is on).

opentelemetry-instrumentation-grpc 0.66b2 does work with grpc.aio 1.85, but it would add
three pinned dependencies (and wrapt proxies around every context) and it knows nothing
of VM ids; this is the part of it we need. Per the gRPC semantic conventions the span is
named `nodesvc.v1.NodeService/CreateVm`, kind SERVER, with rpc.system, rpc.service,
rpc.method and rpc.grpc.status_code, plus `nodesvc.vm_id` when the request names a VM.
An incoming W3C `traceparent` (metadata) makes it a child of the caller's span. The span
is the current one while the RPC runs, so the core's spans (vmm.start …) hang under it.
It must sit outside DomainErrorInterceptor to see the status code that one sets.
"""

from __future__ import annotations

import asyncio
import inspect

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

C = grpc.StatusCode
# Codes that mean the server failed (semantic conventions); others are the caller's doing.
SERVER_FAULTS = {C.UNKNOWN, C.DEADLINE_EXCEEDED, C.UNIMPLEMENTED, C.INTERNAL, C.UNAVAILABLE,
                 C.DATA_LOSS}


class TracingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tracing):
        self.tracer = tracing.tracer

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method            # "/pkg.Service/Method"
        service, _, name = method.lstrip("/").rpartition("/")
        carrier = {k: v for k, v in handler_call_details.invocation_metadata or ()
                   if isinstance(v, str)}
        attrs = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        span_name = method.lstrip("/")
        kinds = (("unary_unary", grpc.unary_unary_rpc_method_handler),
                 ("unary_stream", grpc.unary_stream_rpc_method_handler),
                 ("stream_unary", grpc.stream_unary_rpc_method_handler),
                 ("stream_stream", grpc.stream_stream_rpc_method_handler))
        for attr, make in kinds:
            behavior = getattr(handler, attr)
            if behavior is None:
                continue
            rpc = _Rpc(self.tracer, span_name, carrier, attrs, attr.startswith("stream_"))
            wrap = rpc.wrap_stream if inspect.isasyncgenfunction(behavior) else rpc.wrap_unary
            return make(wrap(behavior), request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
        return handler


class _Rpc:
    def __init__(self, tracer, name: str, carrier: dict, attrs: dict, request_stream: bool):
        self.tracer, self.name, self.carrier, self.attrs = tracer, name, carrier, attrs
        self.request_stream = request_stream

    def _start(self, request):
        parent = propagate.extract(self.carrier)
        span = self.tracer.start_span(self.name, context=parent, kind=SpanKind.SERVER,
                                      attributes=self.attrs)
        if self.request_stream:
            request = _tag_first(request, span)
        else:
            _tag_vm(span, request)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return span, token, request

    def wrap_unary(self, behavior):
        async def wrapper(request, context):
            span, token, request = self._start(request)
            try:
                return await behavior(request, context)
            except BaseException as e:
                _failed(span, context, e)
                raise
            finally:
                _end(span, context)
                otel_context.detach(token)
        return wrapper

    def wrap_stream(self, behavior):
        async def wrapper(request, context):
            span, token, request = self._start(request)
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as e:
                _failed(span, context, e)
                raise
            finally:
                _end(span, context)
                otel_context.detach(token)
        return wrapper


def _tag_vm(span, message) -> None:
    vm_id = getattr(message, "vm_id", None)
    if vm_id:
        span.set_attribute("nodesvc.vm_id", vm_id)


async def _tag_first(requests, span):
    """Request streams (AttachConsole) name the VM in their first message."""
    first = True
    async for msg in requests:
        if first:
            _tag_vm(span, msg)
            first = False
        yield msg


def _failed(span, context, e: BaseException) -> None:
    if isinstance(e, asyncio.CancelledError):
        span.set_attribute("rpc.grpc.status_code", C.CANCELLED.value[0])
    elif not isinstance(e, (grpc.RpcError, grpc.aio.BaseError)):    # not an abort: a bug
        span.record_exception(e)
        span.set_attribute("rpc.grpc.status_code", C.UNKNOWN.value[0])


def _end(span, context) -> None:
    if "rpc.grpc.status_code" not in span.attributes:
        code = context.code()
        code = C.OK if code is None else code
        if isinstance(code, int):       # grpc.aio may hand back the raw integer
            code = next((c for c in C if c.value[0] == code), C.UNKNOWN)
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in SERVER_FAULTS:
            span.set_status(Status(StatusCode.ERROR, context.details() or code.name))
    elif span.attributes["rpc.grpc.status_code"] == C.UNKNOWN.value[0]:
        span.set_status(Status(StatusCode.ERROR, "unhandled exception"))
    span.end()
