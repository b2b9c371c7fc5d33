"""MMDS with real HTTP clients: curl and urllib in a network namespace, the Linux TCP stack
as the peer, no net device and no guest.

The namespace plays the guest: its kernel routes 169.254.169.254 through a TAP, and
what it sends on that TAP is exactly what a guest's eth0 would put on the TX queue.
A pump thread reads the TAP fd, feeds `detour`/`handle`, and writes `pending_rx()`
frames back (the guest's RX), arming its wait on `next_deadline()` the way the net
device's timer will. Every wait is bounded; the namespace is removed afterwards.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from nodesvc.mmds import V1, V2, Mmds, MmdsStack
from nodesvc.net.netns import NetNamespace
from nodesvc.net.tap import open_tap

URL = "http://169.254.169.254"
TAP = "mmds0"
DOC = {"latest": {"meta-data": {"ami-id": "ami-0abc", "instance-id": "i-123",
                                "placement": {"availability-zone": "eu-1a"}},
                  "user-data": "#cloud-config\n"}}
CURL = shutil.which("curl")
need_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed (scripts/install-sysdeps)")


def wait_for(cond, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Pump:
    """TAP fd <-> MmdsStack on one thread; frames not for MMDS are counted and dropped."""

    def __init__(self, stack: MmdsStack, fd: int):
        self.stack, self.fd = stack, fd
        self.passed = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmds-pump", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stack = self.stack
        try:
            while not self._stop.is_set():
                deadline = stack.next_deadline()
                wait = 0.05 if deadline is None else min(0.05, max(0.0, deadline - time.monotonic()))
                select.select([self.fd], [], [], wait)
                for _ in range(256):
                    try:
                        frame = os.read(self.fd, 65536)
                    except BlockingIOError:
                        break
                    if stack.detour(frame):
                        stack.handle(frame)
                    else:
                        self.passed += 1        # would go to the TAP in the device
                for _ in range(4096):
                    out = stack.pending_rx()
                    if out is None:
                        break
                    try:
                        os.write(self.fd, out)
                    except BlockingIOError:
                        break                   # like a guest out of RX buffers: frame lost
        except BaseException as e:  # surfaced by close()
            self.error = e

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        assert not self._thread.is_alive(), "pump thread did not stop"
        if self.error is not None:
            raise self.error


class Rig:
    def __init__(self, ns: NetNamespace, mmds: Mmds, stack: MmdsStack, pump: Pump):
        self.ns, self.mmds, self.stack, self.pump = ns, mmds, stack, pump

    def curl(self, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns.name, CURL, "-sS", "--noproxy", "*",
                               "-m", "10", *args], capture_output=True, text=True,
                              timeout=timeout)

    def urlopen(self, path: str, method: str = "GET", headers: dict | None = None,
                timeout: float = 10):
        """(status, headers, body) from urllib inside the namespace; HTTP errors included."""
        def call():
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            req = urllib.request.Request(URL + path, method=method, headers=headers or {})
            try:
                with opener.open(req, timeout=timeout) as r:
                    return r.status, r.headers, r.read()      # case-insensitive
            except urllib.error.HTTPError as e:
                with e:
                    return e.code, e.headers, e.read()
        return self.ns.run(call)


@pytest.fixture
def rig():
    skew = [0.0]                                   # token clock offset, for expiry tests
    mmds = Mmds(version=V1, instance_id="netns-vm", clock=lambda: time.monotonic() + skew[0])
    mmds.put(DOC)
    stack = MmdsStack(mmds, verify_checksums=True)
    ns = NetNamespace("mmdstest")
    pump = tap = None
    try:
        ns.create_tap(TAP)
        ns.sysctl(f"net.ipv6.conf.{TAP}.disable_ipv6", 1)
        ns.add_address(TAP, "192.0.2.2", 24)
        with ns.ipr() as ip:
            ip.route("add", dst="169.254.169.254/32", oif=ip.link_lookup(ifname=TAP)[0])
        tap = open_tap(TAP, ns.name, vnet_hdr=False)
        pump = Pump(stack, tap.fd)
        r = Rig(ns, mmds, stack, pump)
        r.skew = skew
        yield r
    finally:
        try:
            if pump is not None:
                pump.close()
        finally:
            if tap is not None:
                tap.close()
            ns.close()


def test_urllib_v1_get_text_json_and_errors(rig):
    status, headers, body = rig.urlopen("/latest/meta-data/")
    assert (status, body) == (200, b"ami-id\ninstance-id\nplacement/")
    assert headers["Content-Type"] == "text/plain"
    status, headers, body = rig.urlopen("/latest/meta-data/ami-id",
                                        headers={"Accept": "application/json"})
    assert (status, body, headers["Content-Type"]) == (200, b'"ami-0abc"', "application/json")
    status, _, body = rig.urlopen("/latest", headers={"Accept": "application/json"})
    assert json.loads(body) == DOC["latest"]
    assert rig.urlopen("/latest/nope")[::2] == (404, b"Resource not found: /latest/nope.")
    status, headers, _ = rig.urlopen("/latest", method="PATCH")
    assert (status, headers["Allow"]) == (405, "GET, PUT")
    assert rig.urlopen("/latest", method="POST")[0] == 501
    # urllib closes each connection; every one ends by FIN both ways, none by RST or timeout
    wait_for(lambda: not rig.stack.tcp.connections, "connections to close")
    stats = rig.stack.tcp.stats
    assert stats["opened"] == stats["closed"] == 6 and stats["unexpected"] == 0


@need_curl
def test_curl_v1_get_and_keep_alive(rig):
    r = rig.curl("-i", f"{URL}/latest/meta-data/placement/availability-zone")
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.partition("\n\n")       # text mode: CRLF reads as LF
    assert head.startswith("HTTP/1.1 200") and "Server: Firecracker API" in head
    assert body == "eu-1a"
    # several URLs on one command line reuse one connection (keep-alive)
    before = rig.stack.tcp.stats["opened"]
    r = rig.curl("-w", "|%{num_connects}\n", *[f"{URL}/latest/meta-data/ami-id"] * 5)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ami-0abc") == 5
    assert [int(line.rsplit("|", 1)[1]) for line in r.stdout.splitlines()] == [1, 0, 0, 0, 0]
    assert rig.stack.tcp.stats["opened"] - before == 1


@need_curl
def test_curl_v2_token_flow_and_401s(rig):
    rig.mmds.version = V2
    r = rig.curl("-w", "%{http_code}", f"{URL}/latest/meta-data/ami-id")
    assert r.stdout.endswith("401") and "No MMDS token provided" in r.stdout
    r = rig.curl("-X", "PUT", "-H", "X-metadata-token-ttl-seconds: 5", "-D", "-",
                 f"{URL}/latest/api/token")
    assert r.returncode == 0, r.stderr
    head, _, token = r.stdout.partition("\n\n")
    assert "X-metadata-token-ttl-seconds: 5" in head and len(token) == 48
    r = rig.curl("-H", f"X-metadata-token: {token}", f"{URL}/latest/meta-data/instance-id")
    assert r.stdout == "i-123"
    r = rig.curl("-H", f"X-aws-ec2-metadata-token: {token}", "-H", "Accept: application/json",
                 f"{URL}/latest/meta-data/placement")
    assert json.loads(r.stdout) == {"availability-zone": "eu-1a"}
    rig.skew[0] += 5                               # the token's five seconds are over
    r = rig.curl("-w", "%{http_code}", "-H", f"X-metadata-token: {token}",
                 f"{URL}/latest/meta-data/instance-id")
    assert r.stdout == "MMDS token not valid.401"
    r = rig.curl("-w", "%{http_code}", "-X", "PUT", "-H", "X-metadata-token-ttl-seconds: 60",
                 "-H", "X-Forwarded-For: 10.0.0.1", f"{URL}/latest/api/token")
    assert r.stdout.endswith("400") and "X-Forwarded-For" in r.stdout


def test_urllib_v2_token_flow(rig):
    rig.mmds.version = V2
    assert rig.urlopen("/latest/meta-data/ami-id")[0] == 401
    status, headers, token = rig.urlopen("/latest/api/token", "PUT",
                                         {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
    assert status == 200 and headers["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"
    ok = rig.urlopen("/latest/meta-data/ami-id", headers={"X-metadata-token": token.decode()})
    assert ok[::2] == (200, b"ami-0abc")
    forged = token[:-2] + (b"AA" if token[-2:] != b"AA" else b"BB")
    assert rig.urlopen("/latest/meta-data/ami-id",
                       headers={"X-metadata-token": forged.decode()})[0] == 401
    other = Mmds(version=V2)                       # another VMM's token
    raw = f"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n".encode()
    foreign = other.respond(raw).body.decode()
    assert rig.urlopen("/", headers={"X-metadata-token": foreign})[0] == 401
    for ttl in ("0", "21601", "x"):
        assert rig.urlopen("/latest/api/token", "PUT",
                           {"X-metadata-token-ttl-seconds": ttl})[0] == 400


@need_curl
def test_large_document_and_live_update(rig):
    big = {"blob": "".join(chr(ord("a") + i % 26) for i in range(50000))}
    rig.mmds.put(big)                  # the pump thread only reads the store
    r = rig.curl(f"{URL}/blob")
    assert r.returncode == 0 and r.stdout == big["blob"]
    status, _, body = rig.urlopen("/", headers={"Accept": "application/json"})
    assert status == 200 and json.loads(body) == big
    rig.mmds.patch({"blob": None, "v": "2"})
    assert rig.curl(f"{URL}/v").stdout == "2"


def test_many_concurrent_clients(rig):
    results: list = []
    errors: list = []

    def client(i: int) -> None:
        try:
            for _ in range(3):
                results.append(rig.urlopen("/latest/meta-data/instance-id")[::2])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads) and not errors, (rig.stack.tcp.stats, errors[:2])
    assert results == [(200, b"i-123")] * 75
    assert len(rig.stack.tcp.connections) <= 30


def test_client_that_stops_reading_does_not_block_others(rig):
    rig.mmds.put({"big": "q" * 50000})
    s = rig.ns.run(socket.create_connection, ("169.254.169.254", 80), 5)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /big HTTP/1.1\r\n\r\n" * 3)   # and never read
        time.sleep(0.5)
        assert rig.urlopen("/big")[::2] == (200, b"q" * 50000)
        assert len(rig.stack.tcp.connections) >= 1      # the stalled one is still there
    finally:
        s.close()


def test_udp_and_other_tcp_ports_are_consumed(rig):
    u = rig.ns.socket()                            # UDP (ICMP would do the same; no ping here)
    try:
        u.sendto(b"hello", ("169.254.169.254", 53))
        wait_for(lambda: rig.stack.stats["rx_not_tcp"] >= 1, "the datagram to be swallowed")
    finally:
        u.close()
    s = rig.ns.run(socket.socket)
    s.settimeout(5)
    try:
        with pytest.raises(ConnectionRefusedError):  # RST from port 81
            rig.ns.run(s.connect, ("169.254.169.254", 81))
    finally:
        s.close()
