"""What MMDS answers: Firecracker's `mmds/mod.rs::convert_to_response`, request by request.

    GET  V1: always served; a token, if sent, is checked only for the counters.
    GET  V2: `X-metadata-token` / `X-aws-ec2-metadata-token` required and valid, else 401.
    PUT  /latest/api/token (V1 and V2): `X-metadata-token-ttl-seconds` or
         `X-aws-ec2-metadata-token-ttl-seconds` in 1..21600 -> 200 text/plain token, the
         TTL header echoed; `X-Forwarded-For` -> 400; another path -> 404.
    PATCH, DELETE -> 405 (Allow: GET, PUT); other methods -> 501 (the parser's).

The output format is JSON for `Accept: application/json` (a string leaf comes back
quoted), IMDS text otherwise, and always IMDS with `imds_compat`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any, Callable

from . import http
from .store import DEFAULT_LIMIT, MmdsStore, NotFound, UnsupportedValueType
from .token import PATH_TO_TOKEN, InvalidTtl, TokenAuthority

V1, V2 = "V1", "V2"
TOKEN_HEADERS = ("X-metadata-token", "X-aws-ec2-metadata-token")
TTL_HEADERS = ("X-metadata-token-ttl-seconds", "X-aws-ec2-metadata-token-ttl-seconds")
NO_TOKEN = ("No MMDS token provided. Use `X-metadata-token` or `X-aws-ec2-metadata-token` "
            "header to specify the session token.")
NO_TTL = ("Token time to live value not found. Use `X-metadata-token-ttl-seconds` or "
          "`X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime.")


def sanitize_path(path: str) -> str:
    while "//" in path:
        path = path.replace("//", "/")
    return path


class Mmds:
    """The data store, the token authority and the version of one VMM's MMDS."""

    def __init__(self, *, version: str = V1, limit: int = DEFAULT_LIMIT, instance_id: str = "",
                 imds_compat: bool = False, clock: Callable[[], float] = time.monotonic,
                 tokens: TokenAuthority | None = None):
        self.store = MmdsStore(limit)
        self.tokens = tokens or TokenAuthority(instance_id, clock=clock)
        self.version = version
        self.imds_compat = imds_compat
        self.stats: Counter[str] = Counter()
        # The control plane updates from the VMM's control thread while the net devices
        # answer on the event-loop thread: one lock, held for a store update or for one
        # request (both bounded by the store's size limit).
        self.lock = threading.Lock()

    @property
    def version(self) -> str:
        return self._version

    @version.setter
    def version(self, value: str) -> None:
        if value not in (V1, V2):
            raise ValueError(f"MMDS version must be {V1!r} or {V2!r}, got {value!r}")
        self._version = value

    # -- the control plane's side ----------------------------------------------------
    def put(self, doc: Any) -> None:
        with self.lock:
            self.store.put(doc)

    def patch(self, doc: Any) -> None:
        with self.lock:
            self.store.patch(doc)

    # -- the guest's side --------------------------------------------------------------
    def respond(self, raw: bytes) -> http.Response:
        """The response to one framed request (see http.request_length)."""
        with self.lock:
            return self._respond(raw)

    def _respond(self, raw: bytes) -> http.Response:
        try:
            req = http.parse(raw)
        except http.HttpError as e:
            self.stats["rx_bad_request"] += 1
            return http.error_response(e)
        return self.respond_to(req)

    def respond_to(self, req: http.Request) -> http.Response:
        v = req.version
        if not req.path:
            return http.Response(400, b"Invalid URI.", v)
        if req.method == "GET":
            return self._get(req)
        if req.method == "PUT":
            return self._put(req)
        return http.Response(405, b"Not allowed HTTP method.", v, allow=("GET", "PUT"))

    def _get(self, req: http.Request) -> http.Response:
        token = req.header(*TOKEN_HEADERS)
        if token is None:
            self.stats["rx_no_token"] += 1
            if self.version == V2:
                return http.Response(401, NO_TOKEN.encode(), req.version)
        elif not self.tokens.is_valid(token[1]):
            self.stats["rx_invalid_token"] += 1
            if self.version == V2:
                return http.Response(401, b"MMDS token not valid.", req.version)
        as_json = req.accept == http.JSON
        try:
            body = self.store.get(sanitize_path(req.path), as_json, self.imds_compat)
        except NotFound:
            return http.Response(404, f"Resource not found: {req.path}.".encode(), req.version)
        except UnsupportedValueType as e:
            return http.Response(501, str(e).encode(), req.version)
        self.stats["rx_get_ok"] += 1
        ctype = http.TEXT if self.imds_compat else req.accept
        return http.Response(200, body.encode(), req.version, content_type=ctype)

    def _put(self, req: http.Request) -> http.Response:
        v = req.version
        fwd = req.header("X-Forwarded-For")
        if fwd is not None:
            return http.Response(400, f"Invalid header. Reason: Unsupported header name. "
                                      f"Key: {fwd[0]}".encode(), v)
        if sanitize_path(req.path) != PATH_TO_TOKEN:
            return http.Response(404, f"Resource not found: {req.path}.".encode(), v)
        ttl = req.header(*TTL_HEADERS)
        if ttl is None:
            return http.Response(400, NO_TTL.encode(), v)
        name, value = ttl
        if not (value.isdigit() and value.isascii()) or int(value) >= 2**32:
            return http.Response(400, f"Invalid header. Reason: Invalid value. "
                                      f"Key:{name}; Value:{value}".encode(), v)
        try:
            token = self.tokens.generate(int(value))
        except InvalidTtl as e:
            return http.Response(400, str(e).encode(), v)
        self.stats["tokens_issued"] += 1
        return http.Response(200, token.encode(), v, headers=((name, str(int(value))),))
