"""Where the node service is and how to reach it: Unix socket (the default) or TCP with
mutual TLS; plaintext TCP only when asked for explicitly, like the server."""

from __future__ import annotations

import os
from dataclasses import dataclass

import grpc

from .errors import SpecError

DEFAULT_SOCKET = "/var/lib/nodesvc/nodesvc.sock"
#: Environment variables nodectl and the clients read when no target is given.
ENV_TARGET, ENV_SOCKET = "NODESVC_TARGET", "NODESVC_SOCKET"


@dataclass(frozen=True)
class Tls:
    """Mutual TLS: the CA that signed the server's certificate and this client's own
    certificate and key (PEM file paths or PEM bytes)."""
    ca: str | bytes
    cert: str | bytes
    key: str | bytes
    server_name: str | None = None      # override the name checked in the server's cert

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=_pem(self.ca),
                                            private_key=_pem(self.key),
                                            certificate_chain=_pem(self.cert))


def _pem(v: str | bytes) -> bytes:
    if isinstance(v, bytes):
        return v
    try:
        with open(v, "rb") as f:
            return f.read()
    except OSError as e:
        raise SpecError(f"cannot read TLS file {v}: {e.strerror}") from None


def default_target() -> str:
    if os.environ.get(ENV_TARGET):
        return os.environ[ENV_TARGET]
    return "unix://" + os.environ.get(ENV_SOCKET, DEFAULT_SOCKET)


def normalize_target(target: str | None) -> str:
    """'unix:///abs', 'unix:rel', a bare socket path, or 'host:port' -> a gRPC target."""
    target = target or default_target()
    if target.startswith("unix:"):
        return target
    if target.startswith(("/", "./", "../")) or os.sep in target.split(":", 1)[0]:
        return "unix://" + os.path.abspath(target)
    return target


def is_unix(target: str) -> bool:
    return target.startswith("unix:")


def _options(tls: Tls | None) -> list[tuple[str, object]]:
    opts: list[tuple[str, object]] = [("grpc.max_receive_message_length", 16 << 20)]
    if tls is not None and tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    return opts


def _check(target: str, tls: Tls | None, insecure: bool) -> None:
    if is_unix(target) and tls is not None:
        raise SpecError(f"TLS options are for TCP targets, not the Unix socket {target}")
    if not is_unix(target) and tls is None and not insecure:
        raise SpecError(f"refusing plaintext TCP to {target}: give TLS credentials "
                        "(the node service requires mutual TLS), or allow plaintext explicitly "
                        "(insecure=True, nodectl --insecure)")


def make_channel(target: str | None, tls: Tls | None = None, insecure: bool = False,
                 *, aio: bool = False):
    target = normalize_target(target)
    _check(target, tls, insecure)
    mod = grpc.aio if aio else grpc
    if tls is None:
        return mod.insecure_channel(target, options=_options(None))
    return mod.secure_channel(target, tls.credentials(), options=_options(tls))
