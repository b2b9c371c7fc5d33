"""A grpc.aio channel to one node service: its Unix socket, or TCP with mutual TLS."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import json_format

from ..api.v1 import nodesvc_pb2 as pb
from ..api.v1 import nodesvc_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class TlsFiles:
    ca: str
    cert: str
    key: str
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(p):
            with open(p, "rb") as f:
                return f.read()
        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


def open_node(endpoint: str, tls: TlsFiles | None = None):
    """(channel, NodeServiceStub). Unix sockets need no TLS; TCP needs it (the node refuses
    plaintext TCP unless run with --insecure-tcp)."""
    opts = [("grpc.max_receive_message_length", 16 << 20),
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]
    if endpoint.startswith("unix:") or tls is None:
        ch = grpc.aio.insecure_channel(endpoint, options=opts)
    else:
        if tls.server_name:
            opts.append(("grpc.ssl_target_name_override", tls.server_name))
        ch = grpc.aio.secure_channel(endpoint, tls.credentials(), options=opts)
    return ch, pb_grpc.NodeServiceStub(ch)


def state_name(state: int) -> str:
    return pb.VmState.Name(state).removeprefix("VM_STATE_")


def spec_from_json(d: dict) -> pb.VmSpec:
    return json_format.ParseDict(d, pb.VmSpec())


def spec_to_json(spec: pb.VmSpec) -> dict:
    return json_format.MessageToDict(spec)
