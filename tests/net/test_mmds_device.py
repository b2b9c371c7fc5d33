"""MMDS through the real net device: real clients, no guest boot.

A second namespace plays the guest (nodesvc_virtio_net.testing.GuestBridge): its kernel's
eth0 is a TAP whose frames become the device's TX chains through the in-process driver,
and whatever the device completes on RX goes back into it. curl and urllib run there
against http://169.254.169.254/, so the device's TX detour, RX injection and MMDS timer
are what carry the exchange; the Linux TCP stack is the peer. The device's own TAP (the
host side, in the rig's namespace) is captured to show that no frame for the MMDS
address reaches it, while ordinary traffic still does. Every wait is bounded; both
namespaces are removed afterwards.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from nodesvc.mmds import V1, V2
from nodesvc.mmds.config import MmdsConfig
from nodesvc.mmds.vm import VmMmds
from nodesvc.testing import FakeLimiter
from nodesvc.vmm.virtio import constants as V
from nodesvc_virtio_net import constants as C
from nodesvc_virtio_net.testing import HOST_IP, TAP_NAME, GuestBridge

MMDS_IP = "169.254.169.254"
URL = f"http://{MMDS_IP}"
DOC = {"latest": {"meta-data": {"ami-id": "ami-0abc", "instance-id": "i-123",
                                "placement": {"availability-zone": "eu-1a"}}}}
# no offloads: the guest namespace's TAP has no vnet header
FEATURES = (1 << C.F_MAC) | (1 << C.F_STATUS) | (1 << V.F_VERSION_1)
CURL = shutil.which("curl")
need_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed (scripts/install-sysdeps)")
ETH_P_ALL = 0x0003


def wait_for(cond, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Capture:
    """Every frame the host kernel gets on the device's TAP (AF_PACKET in the rig's ns)."""

    def __init__(self, rig):
        self.sock = rig.ns.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((TAP_NAME, 0))
        self.sock.setblocking(False)
        self.frames: list[bytes] = []

    def drain(self) -> list[bytes]:
        while True:
            try:
                data, addr = self.sock.recvfrom(65536)
            except BlockingIOError:
                return self.frames
            if addr[2] != socket.PACKET_OUTGOING:   # what came from the device
                self.frames.append(data)

    def close(self) -> None:
        self.sock.close()


def for_mmds(frame: bytes, ip: bytes = socket.inet_aton(MMDS_IP)) -> bool:
    etype = frame[12:14]
    return (etype == b"\x08\x00" and frame[30:34] == ip) or \
        (etype == b"\x08\x06" and frame[38:42] == ip)


class Setup:
    def __init__(self, rig, vm_mmds: VmMmds, bridge: GuestBridge, capture: Capture):
        self.rig, self.vm_mmds, self.bridge, self.capture = rig, vm_mmds, bridge, capture
        self.mmds = vm_mmds.mmds

    @property
    def stack(self):
        return self.rig.dev.mmds.stack

    def curl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.bridge.ns.name, CURL, "-sS",
                               "--noproxy", "*", "-m", "10", *args], capture_output=True,
                              text=True, timeout=20)

    def urlopen(self, path: str, method: str = "GET", headers: dict | None = None):
        """(status, headers, body) from urllib inside the guest namespace."""
        def call():
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            req = urllib.request.Request(URL + path, method=method, headers=headers or {})
            try:
                with opener.open(req, timeout=10) as r:
                    return r.status, r.headers, r.read()
            except urllib.error.HTTPError as e:
                with e:
                    return e.code, e.headers, e.read()
        return self.bridge.ns.run(call)


def make_setup(make_rig, version: str = V1, tx_limiter=None) -> Setup:
    vm_mmds = VmMmds(MmdsConfig(("eth0",), version), "device-vm")
    vm_mmds.mmds.put(DOC)
    rig = make_rig(features=FEATURES, mmds_stack=vm_mmds.stack_factory("eth0"),
                   tx_limiter=tx_limiter)
    capture = Capture(rig)
    rig.closers.append(capture.close)
    bridge = GuestBridge(rig)
    rig.closers.append(bridge.close)      # runs before the rig's own teardown
    bridge.route(f"{MMDS_IP}/32")
    bridge.start()
    return Setup(rig, vm_mmds, bridge, capture)


@pytest.fixture
def setup(make_rig):
    return make_setup(make_rig)


def test_urllib_v1_text_json_and_errors(setup):
    status, headers, body = setup.urlopen("/latest/meta-data/")
    assert (status, body, headers["Content-Type"]) == \
        (200, b"ami-id\ninstance-id\nplacement/", "text/plain")
    status, headers, body = setup.urlopen("/latest/meta-data/ami-id",
                                          headers={"Accept": "application/json"})
    assert (status, body, headers["Content-Type"]) == (200, b'"ami-0abc"', "application/json")
    assert json.loads(setup.urlopen("/latest", headers={"Accept": "application/json"})[2]) \
        == DOC["latest"]
    assert setup.urlopen("/latest/nope")[::2] == (404, b"Resource not found: /latest/nope.")
    status, headers, _ = setup.urlopen("/latest", method="PATCH")
    assert (status, headers["Allow"]) == (405, "GET, PUT")
    assert setup.urlopen("/latest", method="POST")[0] == 501
    dev = setup.rig.dev.stats
    assert dev.tx_mmds > 0 and dev.rx_mmds > 0
    assert dev.tx_packets == 0          # nothing of it went to the TAP
    wait_for(lambda: not setup.stack.tcp.connections, "connections to close")


@need_curl
def test_curl_v2_token_flow_and_401s(make_rig):
    s = make_setup(make_rig, V2)
    r = s.curl("-w", "%{http_code}", f"{URL}/latest/meta-data/ami-id")
    assert r.stdout.endswith("401") and "No MMDS token provided" in r.stdout, r.stderr
    r = s.curl("-X", "PUT", "-H", "X-metadata-token-ttl-seconds: 1", "-D", "-",
               f"{URL}/latest/api/token")
    assert r.returncode == 0, r.stderr
    head, _, short = r.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 200") and "X-metadata-token-ttl-seconds: 1" in head
    token = s.curl("-X", "PUT", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 600",
                   f"{URL}/latest/api/token").stdout
    assert len(token) == 48
    r = s.curl("-H", f"X-metadata-token: {token}", f"{URL}/latest/meta-data/instance-id")
    assert r.stdout == "i-123"
    r = s.curl("-H", f"X-aws-ec2-metadata-token: {token}", "-H", "Accept: application/json",
               f"{URL}/latest/meta-data/placement")
    assert json.loads(r.stdout) == {"availability-zone": "eu-1a"}
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    r = s.curl("-w", "%{http_code}", "-H", f"X-metadata-token: {forged}", f"{URL}/")
    assert r.stdout == "MMDS token not valid.401"
    time.sleep(1.2)                     # the one-second token is over
    r = s.curl("-w", "%{http_code}", "-H", f"X-metadata-token: {short}", f"{URL}/")
    assert r.stdout == "MMDS token not valid.401"
    r = s.curl("-w", "%{http_code}", "-X", "PUT", "-H", "X-metadata-token-ttl-seconds: 60",
               "-H", "X-Forwarded-For: 10.0.0.1", f"{URL}/latest/api/token")
    assert r.stdout.endswith("400") and "X-Forwarded-For" in r.stdout


def test_urllib_v2_token_flow(make_rig):
    s = make_setup(make_rig, V2)
    assert s.urlopen("/latest/meta-data/ami-id")[0] == 401
    status, headers, token = s.urlopen("/latest/api/token", "PUT",
                                       {"X-metadata-token-ttl-seconds": "21600"})
    assert status == 200 and headers["X-metadata-token-ttl-seconds"] == "21600"
    assert s.urlopen("/latest/meta-data/ami-id",
                     headers={"X-metadata-token": token.decode()})[::2] == (200, b"ami-0abc")
    other = VmMmds(MmdsConfig(("eth0",), V2), "device-vm")    # another VMM, same VM id
    raw = b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n"
    foreign = other.mmds.respond(raw).body.decode()
    assert s.urlopen("/", headers={"X-metadata-token": foreign})[0] == 401


@need_curl
def test_frames_for_mmds_never_reach_the_tap(setup):
    host = setup.rig.host_socket(5311)
    r = setup.curl(f"{URL}/latest/meta-data/ami-id", f"{URL}/latest/meta-data/instance-id")
    assert (r.returncode, r.stdout) == (0, "ami-0abci-123"), r.stderr
    # ordinary guest traffic still goes to the TAP (and shows up in the capture)
    g = setup.bridge.ns.socket()
    try:
        g.sendto(b"to the host", (HOST_IP, 5311))
        assert host.recvfrom(100)[0] == b"to the host"
    finally:
        g.close()
    wait_for(lambda: any(f[12:14] == b"\x08\x00" and f[30:34] == socket.inet_aton(HOST_IP)
                         for f in setup.capture.drain()), "the UDP datagram on the TAP")
    frames = setup.capture.drain()
    assert [f for f in frames if for_mmds(f)] == []
    dev = setup.rig.dev.stats
    assert dev.tx_mmds >= 6             # ARP, SYN, request, ACKs, FIN at least
    assert len(frames) >= 2             # ARP for the host + the datagram
    # the device counts a frame just after the TAP has it (its own thread): wait for it
    wait_for(lambda: dev.tx_packets == len(setup.capture.drain()), "the TX count")


@need_curl
def test_mmds_frames_are_not_charged_to_the_tx_limiter(make_rig):
    limiter = FakeLimiter(ops=0)        # refuses every frame it is asked about
    s = make_setup(make_rig, tx_limiter=limiter)
    r = s.curl(f"{URL}/latest/meta-data/ami-id")
    assert (r.returncode, r.stdout) == (0, "ami-0abc"), r.stderr
    assert not limiter.blocked and s.rig.dev.stats.tx_throttled == 0


@need_curl
def test_large_document_and_live_update(setup):
    big = {"blob": "".join(chr(ord("a") + i % 26) for i in range(50000))}
    setup.mmds.put(big)                 # another thread than the device's: the store's lock
    r = setup.curl(f"{URL}/blob")
    assert r.returncode == 0 and r.stdout == big["blob"], r.stderr
    status, _, body = setup.urlopen("/", headers={"Accept": "application/json"})
    assert status == 200 and json.loads(body) == big
    setup.mmds.patch({"blob": None, "v": "2"})
    assert setup.curl(f"{URL}/v").stdout == "2"


def test_many_concurrent_clients(setup):
    results: list = []
    errors: list = []

    def client() -> None:
        try:
            for _ in range(2):
                results.append(setup.urlopen("/latest/meta-data/instance-id")[::2])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads) and not errors, errors[:2]
    assert results == [(200, b"i-123")] * 50
    assert len(setup.stack.tcp.connections) <= 30


def test_client_that_stops_reading_does_not_block_others(setup):
    setup.mmds.put({"big": "q" * 50000})
    s = setup.bridge.ns.run(socket.create_connection, (MMDS_IP, 80), 5)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /big HTTP/1.1\r\n\r\n" * 3)     # and never read
        time.sleep(0.5)
        assert setup.urlopen("/big")[::2] == (200, b"q" * 50000)
        assert len(setup.stack.tcp.connections) >= 1    # the stalled one is still there
    finally:
        s.close()

