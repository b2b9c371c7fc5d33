"""Errors: every failure a caller sees is a NodeError carrying a gRPC status code."""

from __future__ import annotations

import grpc


class NodeError(Exception):
    """A failed call: `code` is the gRPC status code, `message` the server's explanation."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @property
    def code_name(self) -> str:
        return self.code.name

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> "NodeError":
        # Sync and aio errors both carry code()/details(); a channel that never connected
        # has no details, so fall back to the error's own text.
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else None
        return cls(code or grpc.StatusCode.UNKNOWN, details or str(err))


class SpecError(NodeError, ValueError):
    """A spec or argument rejected on the client side, before any call is made.
    Reported like the server would (INVALID_ARGUMENT) so callers handle one kind of error."""

    def __init__(self, message: str):
        super().__init__(grpc.StatusCode.INVALID_ARGUMENT, message)
