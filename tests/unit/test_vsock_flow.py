"""vsock credit-based flow control and back-pressure, both directions."""

import os
import shutil
import socket
import tempfile
import threading
import time

import pytest

from nodesvc_vsock.connection import CONN_BUF
from nodesvc_vsock.guest import Rig
from nodesvc_vsock.muxer import CTRLQ_MAX
from nodesvc_vsock.packet import (OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_RST, OP_RW, U32)

TIMEOUT = 5.0


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="vsk", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def rig(sockdir):
    r = Rig(os.path.join(sockdir, "v.sock"), tx_slots=256)
    yield r
    r.close()


def host_connect(rig, port):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.connect(rig.uds_path)
    s.sendall(b"CONNECT %d\n" % port)
    line = b""
    while not line.endswith(b"\n"):
        line += s.recv(1)
    assert line.startswith(b"OK "), line
    return s


def recv_exact(sock, n):
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(min(1 << 16, n - len(out)))
        assert chunk, f"EOF after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


def rw_packets(g, port):
    return [(h, p) for h, p in list(g.packets) if h.op == OP_RW and h.dst_port == port]


def test_small_guest_window_is_never_overrun(rig):
    g = rig.guest
    g.listen(52, buf_alloc=1000, auto_credit=False)
    h = host_connect(rig, 52)
    s = g.accept(52)
    data = os.urandom(10_000)
    h.sendall(data)  # fits in the host socket buffer; the device holds it back
    got = b""
    for step in range(10):
        g.wait(lambda: s.rx_total >= 1000 * (step + 1), TIMEOUT, f"window {step}")
        time.sleep(0.15)  # would more arrive than the guest allowed?
        assert s.rx_total == 1000 * (step + 1)
        assert s.max_unconsumed <= 1000
        got += s.read(1000)   # consume (fwd_cnt += 1000) without telling the device...
        time.sleep(0.05)
        assert s.rx_total == 1000 * (step + 1)
        s.credit_update()     # ...until the guest sends CREDIT_UPDATE
    assert got == data
    # with the window shut, the device asked for credit instead of sending
    assert g.received(OP_CREDIT_REQUEST)
    assert all(len(p) <= 1000 for _, p in rw_packets(g, 52))
    h.close()


def test_credit_request_is_answered(rig):
    g = rig.guest
    g.listen(52)
    h = host_connect(rig, 52)
    s = g.accept(52)
    s.send(b"x" * 5000)
    assert recv_exact(h, 5000) == b"x" * 5000
    g.call(s.send_ctl, OP_CREDIT_REQUEST)
    g.wait(lambda: g.received(OP_CREDIT_UPDATE), TIMEOUT, "CREDIT_UPDATE")
    upd = g.received(OP_CREDIT_UPDATE)[-1]
    assert (upd.buf_alloc, upd.fwd_cnt) == (CONN_BUF, 5000)
    h.close()


def test_device_returns_credit_while_guest_streams(rig):
    g = rig.guest
    g.listen(52)
    h = host_connect(rig, 52)
    s = g.accept(52)
    data = os.urandom(3 * CONN_BUF)  # three windows: the guest stalls unless credit comes back
    s.send(data)
    assert recv_exact(h, len(data)) == data
    s.sent_all()
    updates = [u for u in g.received(OP_CREDIT_UPDATE) if u.dst_port == 52]
    assert updates and all(u.fwd_cnt <= len(data) for u in updates)
    h.close()


def test_slow_host_reader_loses_nothing(rig):
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(rig.uds_path + "_1234")
    lst.listen(1)
    lst.settimeout(TIMEOUT)
    s = rig.guest.connect(1234)
    c, _ = lst.accept()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.settimeout(TIMEOUT)
    data = os.urandom(2 << 20)
    s.send(data)
    conn = rig.device.muxer.conns[(1234, s.local_port)]
    time.sleep(0.3)  # the host reads nothing yet: its socket is full, the device buffers
    backlog = rig.guest.call(lambda: len(conn.tx_buf))
    assert 0 < backlog <= CONN_BUF
    got = bytearray()
    while len(got) < len(data):
        chunk = c.recv(8192)
        assert chunk, f"EOF after {len(got)} bytes"
        got += chunk
        if len(got) < 256 * 1024:
            time.sleep(0.001)  # slow at first
    assert bytes(got) == data
    assert conn.state == "established"
    c.close()
    lst.close()


def test_guest_ignoring_credit_is_reset(rig):
    g = rig.guest
    g.listen(52)
    h = host_connect(rig, 52)   # the host never reads
    h.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s = g.accept(52)
    chunk = b"z" * 65536

    def flood():  # raw RW packets, no credit check
        for _ in range(40):
            g.send_packet(OP_RW, 52, s.peer_port, chunk, buf_alloc=s.buf_alloc)
    g.call(flood)
    g.wait(lambda: s.state == "closed", TIMEOUT, "RST")
    assert g.received(OP_RST)[-1].dst_port == 52
    h.close()


def test_no_rx_buffers_queues_replies_and_resumes(sockdir):
    with Rig(os.path.join(sockdir, "v.sock"), rx_buffers=0, tx_slots=256) as r:
        g, mux = r.guest, r.device.muxer
        n = 300   # more unanswerable packets than the reply queue holds
        g.call(lambda: [g.send_packet(OP_RW, 6000 + i, 7777, b"?") for i in range(n)])
        g.wait(lambda: len(mux.ctrlq) == CTRLQ_MAX, TIMEOUT, "reply queue full")
        time.sleep(0.1)
        assert len(mux.ctrlq) == CTRLQ_MAX and r.device._tx_blocked  # TX waits, drops nothing
        h = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        h.connect(r.uds_path)
        h.sendall(b"CONNECT 52\n")
        g.listen(52)
        time.sleep(0.1)
        assert not g.packets  # nowhere to put anything
        g.post_rx_buffers(16)  # the RX kick drains the queue and resumes TX
        g.wait(lambda: len(g.received(OP_RST)) == n, TIMEOUT, "every RST")
        assert sorted(h.dst_port for h in g.received(OP_RST)) == list(range(6000, 6000 + n))
        assert mux.stats["rst_dropped"] == 0
        h.settimeout(TIMEOUT)
        assert h.recv(3) == b"OK "  # the queued REQUEST got through too
        h.close()


def test_counters_wrap_at_32_bits(rig):
    g = rig.guest
    g.listen(52)
    h = host_connect(rig, 52)
    s = g.accept(52)
    conn = next(iter(rig.device.muxer.conns.values()))
    # pretend 4 GiB - 10 bytes already went each way; credit must survive the wrap
    def skew():
        conn.rx_cnt = conn.peer_fwd_cnt = U32 - 9
        s.fwd_cnt = s.last_fwd_sent = s.rx_total = U32 - 9
        s.send_ctl(OP_CREDIT_UPDATE)
    g.call(skew)
    data = os.urandom(100_000)
    threading.Thread(target=h.sendall, args=(data,), daemon=True).start()
    assert s.read(len(data)) == data
    assert conn.rx_cnt == (U32 - 9 + len(data)) & U32
    h.close()
