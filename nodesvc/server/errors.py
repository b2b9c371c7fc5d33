"""The one place that maps domain errors to gRPC status codes: a server interceptor.

Servicers and the core raise `nodesvc.core.errors` exceptions; this turns each class into
its status code with the exception's message. Anything else is a bug in the node service:
logged with its traceback and reported as INTERNAL (never a user mistake, never UNKNOWN).
"""

from __future__ import annotations

import inspect
import logging

import grpc

from ..core import errors as E

log = logging.getLogger("nodesvc.server")

CODES: dict[type, grpc.StatusCode] = {
    E.InvalidSpec: grpc.StatusCode.INVALID_ARGUMENT,
    E.NotFound: grpc.StatusCode.NOT_FOUND,
    E.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    E.WrongState: grpc.StatusCode.FAILED_PRECONDITION,
    E.Exhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    E.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    E.Unsupported: grpc.StatusCode.UNIMPLEMENTED,
}


_PASS_THROUGH = (grpc.RpcError, grpc.aio.BaseError)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for cls in type(exc).__mro__:
        if cls in CODES:
            return CODES[cls], str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


async def _abort(context, method: str, exc: Exception) -> None:
    code, msg = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("%s failed", method, exc_info=exc)
    await context.abort(code, msg)


def _wrap_unary(behavior, method: str):
    async def wrapper(request, context):
        try:
            return await behavior(request, context)
        except _PASS_THROUGH:
            raise           # already a status (context.abort) or grpc's own error
        except Exception as e:
            await _abort(context, method, e)
    return wrapper


def _wrap_stream(behavior, method: str):
    async def wrapper(request, context):
        try:
            async for response in behavior(request, context):
                yield response
        except _PASS_THROUGH:
            raise
        except Exception as e:
            await _abort(context, method, e)
    return wrapper


class DomainErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        kinds = (("unary_unary", grpc.unary_unary_rpc_method_handler),
                 ("unary_stream", grpc.unary_stream_rpc_method_handler),
                 ("stream_unary", grpc.stream_unary_rpc_method_handler),
                 ("stream_stream", grpc.stream_stream_rpc_method_handler))
        for attr, make in kinds:
            behavior = getattr(handler, attr)
            if behavior is None:
                continue
            # Streaming responses are async generators, unless written with context.write.
            wrap = _wrap_stream if inspect.isasyncgenfunction(behavior) else _wrap_unary
            return make(wrap(behavior, method),
                        request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
        return handler
