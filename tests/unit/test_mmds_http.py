"""MMDS HTTP: framing, parsing and every status code Firecracker's MMDS returns."""

import pytest

from nodesvc.mmds import http
from nodesvc.mmds.service import NO_TOKEN, NO_TTL, V1, V2, Mmds


class Clock:
    t = 500.0

    def __call__(self):
        return self.t


DOC = {"latest": {"meta-data": {"ami-id": "ami-123", "n": 7, "sub": {"k": "v"}}}}


def mk(version=V1, **kw):
    clock = Clock()
    m = Mmds(version=version, clock=clock, instance_id="vm1", **kw)
    m.put(DOC)
    return m, clock


def ask(m, raw: bytes):
    """(status, headers dict, body) of m's answer, parsed from the response bytes."""
    out = m.respond(raw).encode()
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    version, status, reason = lines[0].split(" ", 2)
    assert reason == "" and version in ("HTTP/1.0", "HTTP/1.1")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    assert headers["Connection"] == "keep-alive"
    return int(status), headers, body.decode(), version


def req(line: str, *headers: str) -> bytes:
    return ("\r\n".join([line, *headers]) + "\r\n\r\n").encode()


def token(m, ttl="60", header="X-metadata-token-ttl-seconds"):
    status, hdrs, body, _ = ask(m, req("PUT /latest/api/token HTTP/1.1", f"{header}: {ttl}"))
    assert status == 200, body
    return body


# -- framing ---------------------------------------------------------------------------

def test_request_length_framing():
    assert http.request_length(b"GET / HTTP/1.1\r\n") is None
    assert http.request_length(b"GET / HTTP/1.1\r\n\r\nGET") == 18
    assert http.request_length(b"GET / HTTP/1.1\n\nrest") == 16
    assert http.request_length(b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nab") is None
    assert http.request_length(b"GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcd") == 40
    assert http.request_length(b"x" * 2499) is None
    with pytest.raises(http.HttpError) as e:
        http.request_length(b"x" * 2500)
    assert e.value.status == 413 and e.value.close
    with pytest.raises(http.HttpError) as e:
        http.request_length(b"PUT / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n")
    assert e.value.status == 413


# -- 200 -------------------------------------------------------------------------------

def test_v1_get_text_and_json():
    m, _ = mk()
    status, h, body, v = ask(m, req("GET /latest/meta-data/ HTTP/1.1"))
    assert (status, body, h["Content-Type"], v) == (200, "ami-id\nn\nsub/", "text/plain", "HTTP/1.1")
    status, h, body, v = ask(m, req("GET /latest/meta-data/ami-id HTTP/1.0",
                                    "Accept: application/json"))
    assert (status, body, h["Content-Type"], v) == (200, '"ami-123"', "application/json", "HTTP/1.0")
    assert ask(m, req("GET /latest/meta-data/n HTTP/1.1", "accept: application/json"))[2] == "7"
    # unsupported Accept values are ignored: IMDS text
    assert ask(m, req("GET /latest/meta-data/ami-id HTTP/1.1", "Accept: */*"))[2] == "ami-123"
    assert ask(m, req("GET /latest/meta-data/ami-id HTTP/1.1", "Accept: text/plain"))[2] == "ami-123"


def test_paths_absolute_uri_and_double_slashes():
    m, _ = mk()
    assert ask(m, req("GET http://169.254.169.254/latest/meta-data/ami-id HTTP/1.1"))[2] == "ami-123"
    assert ask(m, req("GET //latest///meta-data//ami-id HTTP/1.1"))[2] == "ami-123"
    assert ask(m, req("GET / HTTP/1.1"))[2] == "latest/"


def test_bare_lf_lines_and_header_case_are_accepted():
    m, _ = mk(V2)
    tok = token(m, header="x-METADATA-token-TTL-seconds")
    raw = f"GET /latest/meta-data/ami-id HTTP/1.1\nX-Metadata-Token: {tok}\n\n".encode()
    assert ask(m, raw)[:3:2] == (200, "ami-123")


def test_v1_ignores_bad_tokens_but_counts_them():
    m, _ = mk(V1)
    assert ask(m, req("GET /latest/meta-data/ami-id HTTP/1.1", "X-metadata-token: junk"))[0] == 200
    assert ask(m, req("GET /latest/meta-data/ami-id HTTP/1.1"))[0] == 200
    assert m.stats["rx_invalid_token"] == 1 and m.stats["rx_no_token"] == 1


def test_v2_token_flow_both_header_spellings():
    m, clock = mk(V2)
    for ttl_h, tok_h in (("X-metadata-token-ttl-seconds", "X-metadata-token"),
                         ("X-aws-ec2-metadata-token-ttl-seconds", "X-aws-ec2-metadata-token")):
        status, h, tok, _ = ask(m, req("PUT /latest/api/token HTTP/1.1", f"{ttl_h}: 21600"))
        assert status == 200 and h[ttl_h] == "21600" and h["Content-Type"] == "text/plain"
        status, _, body, _ = ask(m, req("GET /latest/meta-data/ami-id HTTP/1.1", f"{tok_h}: {tok}"))
        assert (status, body) == (200, "ami-123")
    # PUT works in V1 too
    m1, _ = mk(V1)
    assert ask(m1, req("PUT /latest/api/token HTTP/1.1", "X-metadata-token-ttl-seconds: 1"))[0] == 200


# -- 400 -------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, message", [
    (b"GET /\r\n\r\n", "Invalid request."),
    (b"GET /latest HTTP/1.1 extra-without-space\r\n\r\n", None),  # -> 501, see below
    (b"GARBAGE\r\n\r\n", "Invalid request."),
    (b"GET /latest/xx/\r\n\r\n", "Invalid request."),
    (req("GET / HTTP/1.1", "NoColonHere"), "Header is incorrectly formatted"),
    (req("GET / HTTP/1.1", "Content-Length: 5x"), "Invalid value"),
    (req("GET / HTTP/1.1", "Content-Length: 99999999999"), "Invalid value"),
    (req("GET / HTTP/1.1", "Accept:"), "Invalid request."),
    (req("GET / HTTP/1.1", "Accept-Encoding: identity;q=0"), "Invalid value"),
    (b"GET / HTTP/1.1\r\nX-Bin: \xff\xfe\r\n\r\n", "invalid characters"),
    (b"GET /\xff HTTP/1.1\r\n\r\n", "Cannot parse URI as UTF-8."),
    (req("PUT /latest/api/token HTTP/1.1", "Content-Length: 2") + b"{}", "Invalid request."),
])
def test_parse_errors_are_400(raw, message):
    m, _ = mk()
    status, h, body, v = ask(m, raw)
    if message is None:
        assert status == 501
        return
    assert (status, v) == (400, "HTTP/1.1") and message in body, body


def test_invalid_uri_is_400():
    m, _ = mk()
    for uri in ("http://", "http://169.254.169.254", "latest/meta-data"):
        assert ask(m, req(f"GET {uri} HTTP/1.0"))[:3:2] == (400, "Invalid URI.")


def test_put_errors_are_400():
    m, _ = mk(V2)
    ok = "X-metadata-token-ttl-seconds: 60"
    status, _, body, _ = ask(m, req("PUT /latest/api/token HTTP/1.1", ok, "X-Forwarded-For: 1.2.3.4"))
    assert status == 400 and "Unsupported header name. Key: X-Forwarded-For" in body
    status, _, body, _ = ask(m, req("PUT /latest/api/token HTTP/1.1", ok, "x-forwarded-for: a"))
    assert status == 400
    assert ask(m, req("PUT /latest/api/token HTTP/1.1"))[:3:2] == (400, NO_TTL)
    for bad in ("0", "21601", "-1", "abc", "1.5", "4294967296", ""):
        status, _, body, _ = ask(m, req("PUT /latest/api/token HTTP/1.1",
                                        f"X-metadata-token-ttl-seconds: {bad}"))
        assert status == 400, bad
    assert "between 1 and 21600" in ask(m, req("PUT /latest/api/token HTTP/1.1",
                                               "X-metadata-token-ttl-seconds: 21601"))[2]
    assert m.stats["tokens_issued"] == 0


def test_chunked_body_is_400_and_closes():
    m, _ = mk()
    resp = m.respond(req("PUT /latest/api/token HTTP/1.1", "Transfer-Encoding: chunked"))
    assert resp.status == 400 and resp.close


# -- 401 -------------------------------------------------------------------------------

def test_v2_get_without_or_with_bad_or_expired_token_is_401():
    m, clock = mk(V2)
    status, _, body, _ = ask(m, req("GET /latest/meta-data/ami-id HTTP/1.1"))
    assert (status, body) == (401, NO_TOKEN)
    status, _, body, _ = ask(m, req("GET /latest/meta-data/ami-id HTTP/1.1", "X-metadata-token: x"))
    assert (status, body) == (401, "MMDS token not valid.")
    tok = token(m, ttl="1")
    get = req("GET /latest/meta-data/ami-id HTTP/1.1", f"X-metadata-token: {tok}")
    assert ask(m, get)[0] == 200
    clock.t += 1.0
    assert ask(m, get)[:3:2] == (401, "MMDS token not valid.")
    other, _ = mk(V2)  # another VMM's MMDS
    assert ask(other, req("GET / HTTP/1.1", f"X-metadata-token: {token(m)}"))[0] == 401
    # the token check comes before the path lookup
    assert ask(m, req("GET /nope HTTP/1.1"))[0] == 401


# -- 404 / 405 / 413 / 501 -------------------------------------------------------------

def test_missing_path_is_404_with_firecrackers_message():
    m, _ = mk()
    status, _, body, _ = ask(m, req("GET /latest//nope HTTP/1.1"))
    assert (status, body) == (404, "Resource not found: /latest//nope.")
    status, _, body, _ = ask(m, req("PUT /latest/api/other HTTP/1.1", "X-metadata-token-ttl-seconds: 5"))
    assert (status, body) == (404, "Resource not found: /latest/api/other.")


@pytest.mark.parametrize("version", [V1, V2])
def test_patch_and_delete_are_405_with_allow(version):
    m, _ = mk(version)
    for method in ("PATCH", "DELETE"):
        status, h, body, _ = ask(m, req(f"{method} /latest HTTP/1.1"))
        assert (status, h["Allow"], body) == (405, "GET, PUT", "Not allowed HTTP method.")


def test_oversized_request_is_413():
    m, _ = mk()
    with pytest.raises(http.HttpError) as e:
        http.request_length(req("GET / HTTP/1.1", "X-Pad: " + "p" * 3000))
    resp = http.error_response(e.value)
    assert resp.status == 413 and resp.close and b"larger than the limit of 2500" in resp.body


def test_other_methods_versions_and_leaf_types_are_501():
    m, _ = mk()
    for raw in (req("POST / HTTP/1.1"), req("HEAD / HTTP/1.1"), req("get / HTTP/1.1"),
                req("OPTIONS * HTTP/1.1")):
        status, _, body, _ = ask(m, raw)
        assert (status, body) == (501, "Invalid HTTP Method: Unsupported HTTP method.")
    for version in ("HTTP/2.0", "HTTP/1.2", "http/1.1", "HTTP/1.1 x"):
        status, _, body, _ = ask(m, req(f"GET / {version}"))
        assert (status, body) == (501, "Invalid HTTP Version: Unsupported HTTP version.")
    status, _, body, _ = ask(m, req("GET /latest/meta-data/n HTTP/1.1"))
    assert (status, body) == (501, "Cannot retrieve value. The value has an unsupported type.")


def test_imds_compat_ignores_accept():
    m, _ = mk(imds_compat=True)
    status, h, body, _ = ask(m, req("GET /latest/meta-data/ami-id HTTP/1.1", "Accept: application/json"))
    assert (status, h["Content-Type"], body) == (200, "text/plain", "ami-123")


def test_bad_version_setting_refused():
    with pytest.raises(ValueError):
        Mmds(version="V3")
