"""Host side of the in-guest agent boot (guest/agent/): echo servers, ping, vsock, parsing.

Everything here is bounded in time and closes what it opened; the servers run on
daemon threads and record what they saw so the tests can assert on both ends.
"""

from __future__ import annotations

import os
import re
import select
import socket
import struct
import subprocess
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

GUEST = Path(__file__).resolve().parents[2] / "guest"

#: `[   12.345678] AGENT <check> OK|FAIL <detail>` (printk adds the timestamp)
RESULT = re.compile(r"^(?:\[[ \d.]+\] )?AGENT (\S+) (OK|FAIL) ?(.*)$")


@dataclass
class AgentResult:
    status: str     # "OK" or "FAIL"
    detail: str
    fields: dict    # key=value pairs of the detail


def parse_results(text: str) -> dict[str, AgentResult]:
    """Result lines by check name (a repeated check keeps its first line)."""
    out: dict[str, AgentResult] = {}
    for line in text.splitlines():
        m = RESULT.match(line.strip())
        if m and m.group(1) not in out:
            detail = m.group(3)
            fields = dict(kv.split("=", 1) for kv in detail.split() if "=" in kv)
            out[m.group(1)] = AgentResult(m.group(2), detail, fields)
    return out


def crc32_hex(data: bytes) -> str:
    """The agent's crc32 (crc32_le seeded and finished with ~0) is zlib's."""
    return f"{zlib.crc32(data):08x}"


class _Server:
    """One listening/bound socket served on a daemon thread until close()."""

    def __init__(self, sock: socket.socket, name: str):
        self.sock, self.stop = sock, threading.Event()
        self.received: list = []    # what peers sent, per datagram/connection
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                ready, _, _ = select.select([self.sock], [], [], 0.2)
                if ready:
                    self.serve_one()
            except OSError as e:
                if not self.stop.is_set():
                    self.errors.append(repr(e))
                return

    def serve_one(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


class UdpEcho(_Server):
    def serve_one(self) -> None:
        data, peer = self.sock.recvfrom(65536)
        self.received.append(data)
        self.sock.sendto(data, peer)


class StreamEcho(_Server):
    """Accepts connections (TCP or Unix) and echoes each until EOF, one at a time."""

    def serve_one(self) -> None:
        conn, _ = self.sock.accept()
        got = bytearray()
        self.received.append(got)   # filled as it arrives: the peer may never close
        with conn:
            conn.settimeout(30)
            while chunk := conn.recv(65536):
                got += chunk
                conn.sendall(chunk)


def udp_echo(sock_factory, port: int) -> UdpEcho:
    s = sock_factory(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    return UdpEcho(s, f"udp-echo:{port}")


def tcp_echo(sock_factory, port: int) -> StreamEcho:
    s = sock_factory(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(4)
    return StreamEcho(s, f"tcp-echo:{port}")


def unix_echo(path: str) -> StreamEcho:
    """Where the VMM connects a guest-initiated vsock stream: `<uds_path>_<port>`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(4)
    return StreamEcho(s, f"unix-echo:{os.path.basename(path)}")


def _inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_ping(sock_factory, dst: str, *, tries: int = 3, wait: float = 2.0) -> float | None:
    """ICMP echo with a raw socket (no ping binary needed): round-trip seconds, or None."""
    s = sock_factory(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    try:
        for seq in range(1, tries + 1):
            payload = b"nodesvc-agent-ping"
            csum = _inet_checksum(struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload)
            t0 = time.monotonic()
            s.sendto(struct.pack("!BBHHH", 8, 0, csum, ident, seq) + payload, (dst, 0))
            deadline = t0 + wait
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                try:
                    data, (src, _) = s.recvfrom(2048)
                except socket.timeout:
                    break
                ihl = (data[0] & 0x0F) * 4
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
                if src == dst and kind == 0 and rid == ident and rseq == seq:
                    return time.monotonic() - t0
        return None
    finally:
        s.close()


def vsock_host_connect(uds_path: str, port: int, payload: bytes, *,
                       timeout: float = 20.0) -> tuple[bytes, bytes]:
    """Firecracker's host-initiated vsock: `CONNECT <port>\\n` → `OK <hostport>\\n`, then
    send `payload` and read as many bytes back. Returns (the OK line, the echo)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(uds_path)
        s.sendall(f"CONNECT {port}\n".encode())
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(64)
            if not chunk:
                return buf, b""
            buf += chunk
        line, _, rest = buf.partition(b"\n")
        s.sendall(payload)
        echo = rest
        while len(echo) < len(payload):
            chunk = s.recv(4096)
            if not chunk:
                break
            echo += chunk
        return line, echo


@dataclass
class HostSide:
    """What the host thread did while the guest's vsock-listen check was waiting."""
    ping_rtt: float | None = None
    connect_line: bytes = b""
    echo: bytes = b""
    errors: list[str] = field(default_factory=list)
    ready_seen: bool = False


def build_agent_kernel() -> Path:
    """guest/out/vmlinux-agent as guest/agent/ is now: the recipe relinks a cached build in
    well under a second, and rebuilds (~4 min) only when the agent or recipe changed."""
    subprocess.run(["bash", str(GUEST / "build.sh")], check=True)
    return GUEST / "out" / "vmlinux-agent"


def missing_host_capability() -> str | None:
    if os.geteuid() != 0:
        return "not root (network namespaces and TAP creation need it)"
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return "/dev/net/tun is not usable"
    return None


def host_thread(sink, ns, uds: str, guest_ip: str, listen_port: int, payload: bytes,
                out: HostSide, stop: threading.Event) -> None:
    """While the agent waits in vsock-listen: ping the guest, then CONNECT to its port."""
    try:
        marker = f"AGENT vsock-listen READY {listen_port}".encode()
        while not stop.is_set() and not out.ready_seen:
            out.ready_seen = sink.wait_for(marker, 0.5)
        if not out.ready_seen:
            return
        out.ping_rtt = icmp_ping(ns.socket, guest_ip)
        out.connect_line, out.echo = vsock_host_connect(uds, listen_port, payload)
    except Exception as e:  # reported by the tests, never lost in a thread
        out.errors.append(repr(e))


def start_host_thread(*args) -> threading.Thread:
    t = threading.Thread(target=host_thread, args=args, name="agent-host", daemon=True)
    t.start()
    return t
