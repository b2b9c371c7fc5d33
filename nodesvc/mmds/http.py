"""A bounded HTTP/1.x request parser and response writer, after Firecracker's micro-http.

Framing: a request's head ends at the first "\\n\\n" or "\\n\\r\\n" (dumbo's rule);
a Content-Length body, if any, follows it. The whole request must fit the TCP
receive buffer (2500 bytes, Firecracker's RCV_BUF_MAX_SIZE); a larger one is
answered 413 and the connection closed, since the stream cannot be re-synced.

Parsing is micro-http's: methods GET/PUT/PATCH/DELETE (others 501), versions
HTTP/1.0 and HTTP/1.1 (others 501), a malformed request line or header 400, a
body on any request 400 (micro-http never reads one from MMDS's buffer), Accept
`text/plain` or `application/json` (other values ignored, an empty one 400).
Unknown headers are kept, case preserved, and looked up case-insensitively.
Lines may end in CRLF or a bare LF (micro-http wants CRLF; being lenient
costs nothing and helps hand-typed requests).

Responses are byte-for-byte micro-http's: "HTTP/1.1 200 \\r\\n" (no reason
phrase), Server, "Connection: keep-alive", Allow, custom headers, then
Content-Type and Content-Length. The server never closes first except after
a 413 or an unframeable (chunked) request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_REQUEST_BYTES = 2500
SERVER = "Firecracker API"       # micro-http's value; some guest tooling greps for it
METHODS = ("GET", "PUT", "PATCH", "DELETE")
VERSIONS = ("HTTP/1.0", "HTTP/1.1")
TEXT, JSON = "text/plain", "application/json"
_HEAD_END = re.compile(rb"\n\r?\n")
_MIN_REQUEST_LINE = len("GET") + 1 + len("HTTP/1.0") + 2


class HttpError(Exception):
    """A request that gets an error status; `close` when the stream is beyond repair."""

    def __init__(self, status: int, message: str, *, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


def _header_error(reason: str) -> HttpError:
    return HttpError(400, f"Invalid header. Reason: {reason}")


def request_length(buf: bytes | bytearray, limit: int = MAX_REQUEST_BYTES) -> int | None:
    """Bytes of the first complete request in `buf`, None while incomplete.

    Raises HttpError(413, close) when the request cannot fit in `limit` bytes."""
    m = _HEAD_END.search(buf, 0, limit)
    if m is None:
        if len(buf) >= limit:
            raise HttpError(413, f"Request payload with size {len(buf)} is larger than the "
                                 f"limit of {limit} allowed by server.", close=True)
        return None
    end = m.end()
    body = _content_length_hint(bytes(buf[:end]))
    if end + body > limit:
        raise HttpError(413, f"Request payload with size {end + body} is larger than the limit "
                             f"of {limit} allowed by server.", close=True)
    return end + body if len(buf) >= end + body else None


def _content_length_hint(head: bytes) -> int:
    """The declared body length for framing; a malformed value frames as 0 (parse says 400)."""
    for line in head.split(b"\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"content-length":
            v = value.strip()
            return int(v) if v.isdigit() and len(v) <= 10 else 0
    return 0


@dataclass
class Request:
    method: str
    uri: str
    version: str
    headers: dict[str, tuple[str, str]] = field(default_factory=dict)  # lower -> (name, value)
    accept: str = TEXT
    content_length: int = 0

    def header(self, *names: str) -> tuple[str, str] | None:
        """(name as sent, value) of the first of `names` present, case-insensitively."""
        for n in names:
            hit = self.headers.get(n.lower())
            if hit is not None:
                return hit
        return None

    @property
    def path(self) -> str:
        """micro-http's `get_abs_path`: "" for a URI without an absolute path."""
        uri = self.uri
        if uri.startswith("http://"):
            rest = uri[len("http://"):]
            slash = rest.find("/")
            return "" if slash < 0 else rest[slash:]
        return uri if uri.startswith("/") else ""


def parse(data: bytes) -> Request:
    """One framed request (see request_length) to a Request, or HttpError."""
    m = _HEAD_END.search(data)
    head, body = (data[:m.start()], data[m.end():]) if m else (data, b"")
    lines = head.split(b"\n")
    line = lines[0].removesuffix(b"\r")
    if len(line) < _MIN_REQUEST_LINE:
        raise HttpError(400, "Invalid request.")
    parts = line.split(b" ", 2)
    if len(parts) != 3:
        raise HttpError(400, "Invalid request.")
    method, uri, version = parts
    if method.decode("latin-1") not in METHODS:
        raise HttpError(501, "Invalid HTTP Method: Unsupported HTTP method.")
    if not uri:
        raise HttpError(400, "Invalid URI: Empty URI not allowed.")
    try:
        uri_text = uri.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "Invalid URI: Cannot parse URI as UTF-8.") from None
    if version.decode("latin-1") not in VERSIONS:
        raise HttpError(501, "Invalid HTTP Version: Unsupported HTTP version.")
    req = Request(method.decode(), uri_text, version.decode())
    for raw in lines[1:]:
        _parse_header(req, raw.removesuffix(b"\r"))
    if req.content_length or body:
        raise HttpError(400, "Invalid request.")   # micro-http: no body reaches MMDS
    return req


def _parse_header(req: Request, raw: bytes) -> None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _header_error(f"Header contains invalid characters. Key: {e}") from None
    name, sep, value = text.partition(":")
    if not sep:
        raise _header_error(f"Header is incorrectly formatted. Key: {name}")
    key, val = name.strip().lower(), value.strip()
    if key == "content-length":
        if not val.isdigit() or not val.isascii() or int(val) >= 2**32:
            raise _header_error(f"Invalid value. Key:{name}; Value:{value}")
        req.content_length = int(val)
    elif key in ("content-type", "accept"):
        if not val:
            raise HttpError(400, "Invalid request.")
        if key == "accept" and val in (TEXT, JSON):
            req.accept = val                        # anything else (e.g. */*) is ignored
    elif key == "transfer-encoding":
        if val == "chunked":                        # cannot be framed here: give up on the stream
            raise HttpError(400, "Invalid request.", close=True)
    elif key == "accept-encoding":
        if not val:
            raise HttpError(400, "Invalid request.")
        for enc in (e.strip() for e in val.split(",")):
            if enc == "identity;q=0" or (enc == "*;q=0" and "identity" not in val):
                raise _header_error(f"Invalid value. Key:Accept-Encoding; Value:{enc}")
    elif key in ("expect", "server"):
        pass
    else:
        req.headers[key] = (name.strip(), val)


STATUS = {200: "200", 400: "400", 401: "401", 404: "404", 405: "405", 413: "413", 501: "501"}


@dataclass
class Response:
    status: int
    body: bytes = b""
    version: str = "HTTP/1.1"
    content_type: str = TEXT
    allow: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False          # transport hint: FIN after sending (not an HTTP header)

    def encode(self) -> bytes:
        out = [f"{self.version} {self.status} \r\nServer: {SERVER}\r\nConnection: keep-alive\r\n"]
        if self.allow:
            out.append(f"Allow: {', '.join(self.allow)}\r\n")
        out.extend(f"{k}: {v}\r\n" for k, v in self.headers)
        out.append(f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n\r\n")
        return "".join(out).encode("latin-1", "replace") + self.body


def error_response(e: HttpError, version: str = "HTTP/1.1") -> Response:
    return Response(e.status, e.message.encode(), version, close=e.close)
