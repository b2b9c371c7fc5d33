"""Server streams as plain iterators: items mapped through `post` (None skips an item),
gRPC errors raised as NodeError, and cancel() ending the iteration quietly."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Generic, TypeVar

import grpc

from .errors import NodeError

T = TypeVar("T")


class Stream(Generic[T]):
    """A sync streaming call. Iterate it; `cancel()` (from any thread) or leaving a `with`
    block ends it. `dropped` counts what the server reported lost to slow reading."""

    def __init__(self, call, post: Callable[[Any], T | None]):
        self._call, self._post = call, post
        self._cancelled = False
        self.dropped = 0

    def __iter__(self) -> "Stream[T]":
        return self

    def __next__(self) -> T:
        while True:
            try:
                msg = next(self._call)
            except grpc.RpcError as e:
                if self._cancelled and e.code() == grpc.StatusCode.CANCELLED:
                    raise StopIteration from None
                raise NodeError.from_rpc_error(e) from None
            self.dropped += _dropped(msg)
            item = self._post(msg)
            if item is not None:
                return item

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> "Stream[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()


class AsyncStream(Generic[T]):
    """A grpc.aio streaming call as an async iterator (same contract as Stream)."""

    def __init__(self, call, post: Callable[[Any], T | None]):
        self._call, self._post = call, post
        self._cancelled = False
        self.dropped = 0

    def __aiter__(self) -> "AsyncStream[T]":
        return self

    async def __anext__(self) -> T:
        while True:
            try:
                msg = await self._call.read()
            except grpc.RpcError as e:      # grpc.aio.AioRpcError
                if self._cancelled:
                    raise StopAsyncIteration from None
                raise NodeError.from_rpc_error(e) from None
            except asyncio.CancelledError:
                # A read of a call we cancelled raises CancelledError: that is our end of the
                # stream, unless the task itself is being cancelled.
                task = asyncio.current_task()
                if self._cancelled and not (task and task.cancelling()):
                    raise StopAsyncIteration from None
                raise
            if msg is grpc.aio.EOF:
                raise StopAsyncIteration
            self.dropped += _dropped(msg)
            item = self._post(msg)
            if item is not None:
                return item

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    async def __aenter__(self) -> "AsyncStream[T]":
        return self

    async def __aexit__(self, *exc) -> None:
        self.cancel()


def _dropped(msg) -> int:
    return getattr(msg, "dropped_bytes", 0) or getattr(msg, "dropped", 0) or 0
