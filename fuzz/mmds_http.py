"""MMDS HTTP: request framing (`http.request_length` over a receive buffer) and the
service's answer (`Mmds.respond`) for fuzz-made requests, V1 and V2, with tokens the
service issued (valid, tampered with or expired) and without.

Properties: framing returns None or a length within the buffer and the limit, or raises
HttpError only (413, closing); `respond` never raises and its response encodes to bytes
with a known status, a Content-Length equal to the body, and a 200 for a token PUT only
with a TTL in range.
"""

from __future__ import annotations

from fuzz import common

with common.instrumented():
    from fuzz import devices, frames
    from fuzz.harness import Finding, Input
    from nodesvc.mmds import http

CLOCK = devices.Clock()
SERVICES = (devices.mmds(CLOCK), devices.mmds(CLOCK, version="V2"))


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    mmds = inp.pick(SERVICES)
    buf = bytearray()
    for _ in range(inp.int_in(1, 6)):
        token = b""
        if inp.flag():
            token = mmds.tokens.generate(inp.pick((1, 60, 21600))).encode()
            if inp.u8() > 200:
                token = token[:inp.int_in(0, len(token))] + inp.blob(8)
            if inp.u8() > 220:
                CLOCK.now += inp.pick((1.0, 61.0, 30000.0))
        req = frames.http_request(inp, token)
        buf += req
        try:
            n = http.request_length(buf)
        except http.HttpError as e:
            if e.status != 413 or not e.close:
                raise Finding(f"framing raised {e.status} (close={e.close})") from e
            buf.clear()
            continue
        if n is None:
            continue
        if not 0 < n <= min(len(buf), http.MAX_REQUEST_BYTES):
            raise Finding(f"framed {n} bytes of a {len(buf)}-byte buffer")
        raw = bytes(buf[:n])
        del buf[:n]
        resp = mmds.respond(raw)
        out = resp.encode()
        if resp.status not in http.STATUS:
            raise Finding(f"status {resp.status}")
        head, _, body = out.partition(b"\r\n\r\n")
        if f"Content-Length: {len(body)}".encode() not in head or body != resp.body:
            raise Finding("Content-Length does not match the body")
        if resp.status == 200 and raw.startswith(b"PUT") and not resp.body:
            raise Finding("token PUT answered 200 without a token")


if __name__ == "__main__":
    common.main(test_one_input)
