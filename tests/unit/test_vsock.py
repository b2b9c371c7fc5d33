"""vsock device end to end: real Unix sockets on the host side, the in-process guest
(nodesvc_vsock.guest) driving real rings in real guest memory on a real EventLoop thread."""

import os
import shutil
import socket
import tempfile
import threading
import time

import pytest

from nodesvc_vsock.guest import Rig
from nodesvc_vsock.muxer import FIRST_HOST_PORT
from nodesvc_vsock.packet import (HOST_CID, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
                                  OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND)

TIMEOUT = 5.0


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="vsk", dir="/tmp")  # short: sun_path holds 107 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def rig(sockdir):
    r = Rig(os.path.join(sockdir, "v.sock"), device_opts={"connect_timeout": 1.0})
    yield r
    r.close()


def recv_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        b = sock.recv(1)  # byte by byte: what follows the line is stream data
        if not b:
            break
        line += b
    return line


def host_connect(rig, port: int) -> tuple[socket.socket, int]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.connect(rig.uds_path)
    s.sendall(b"CONNECT %d\n" % port)
    line = recv_line(s)
    assert line.startswith(b"OK ") and line.endswith(b"\n"), line
    return s, int(line[3:])


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(min(1 << 16, n - len(out)))
        if not chunk:
            raise EOFError(f"EOF after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def assert_closed(sock: socket.socket) -> None:
    sock.settimeout(TIMEOUT)
    try:
        assert sock.recv(100) == b""
    except ConnectionResetError:
        pass


def host_listener(rig, port: int) -> socket.socket:
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{rig.uds_path}_{port}")
    lst.listen(64)
    lst.settimeout(TIMEOUT)
    return lst


# -- host-initiated -------------------------------------------------------------------------

def test_host_initiated_handshake_step_by_step(rig):
    g = rig.guest
    g.call(g.drop_ports.add, 52)  # the test plays the guest's part by hand
    h = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    h.connect(rig.uds_path)
    h.sendall(b"CONNECT 52\n")
    g.wait(lambda: g.received(OP_REQUEST), TIMEOUT, "REQUEST")
    req = g.received(OP_REQUEST)[0]
    assert (req.src_cid, req.dst_cid, req.dst_port) == (HOST_CID, 3, 52)
    assert req.src_port >= FIRST_HOST_PORT and req.buf_alloc > 0
    h.settimeout(0.2)
    with pytest.raises(socket.timeout):  # no OK before the guest answers
        h.recv(1)
    g.call(g.drop_ports.discard, 52)
    g.call(g.send_packet, OP_RESPONSE, 52, req.src_port, buf_alloc=1 << 16)
    h.settimeout(TIMEOUT)
    assert recv_line(h) == b"OK %d\n" % req.src_port
    h.sendall(b"ping")
    g.wait(lambda: g.received(OP_RW), TIMEOUT, "data")
    hdr, payload = [p for p in g.packets if p[0].op == OP_RW][0]
    assert payload == b"ping" and (hdr.src_port, hdr.dst_port) == (req.src_port, 52)
    h.close()


def test_host_initiated_data_both_ways(rig):
    g = rig.guest
    g.listen(52)
    h, port = host_connect(rig, 52)
    s = g.accept(52)
    assert s.peer_port == port
    up = os.urandom(200_000)  # < the guest's 256 KiB window: read() consumes at the end
    h.sendall(up)
    assert s.read(len(up)) == up
    down = os.urandom(1_000_000)
    s.send(down)
    assert recv_external(h, len(down)) == down
    h.close()


def recv_external(sock, n):
    return recv_exact(sock, n)


def test_connect_line_and_data_in_one_write(rig):
    g = rig.guest
    g.listen(52)
    h = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    h.settimeout(TIMEOUT)
    h.connect(rig.uds_path)
    h.sendall(b"CONNECT 52\nearly bytes")  # bytes after the newline belong to the stream
    assert recv_line(h).startswith(b"OK ")
    assert g.accept(52).read(11) == b"early bytes"
    h.close()


def test_guest_rst_closes_host_socket(rig):
    h = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    h.connect(rig.uds_path)
    h.sendall(b"CONNECT 77\n")  # nobody listens on 77 in the guest: it answers RST
    assert_closed(h)
    g = rig.guest
    g.wait(lambda: not rig.device.muxer.conns, TIMEOUT, "connection cleanup")


@pytest.mark.parametrize("line", [b"HELLO 52\n", b"CONNECT\n", b"CONNECT abc\n",
                                  b"CONNECT 52 53\n", b"CONNECT 4294967296\n", b"CONNECT -1\n",
                                  b"\xff\xfe\n", b"C" * 40])
def test_malformed_connect_closes(rig, line):
    h = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    h.connect(rig.uds_path)
    h.sendall(line)
    assert_closed(h)
    assert not rig.device.muxer.conns


def test_silent_host_times_out(rig):
    h = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    h.connect(rig.uds_path)
    h.sendall(b"CONNE")  # half a line, then nothing
    assert_closed(h)    # how long the 2 s connect-line timeout takes: bench/vsock.py
    assert rig.device.muxer.stats["connect_timeouts"] == 1 and not rig.device.muxer.conns


def test_guest_that_never_answers_times_out(rig):
    g = rig.guest
    g.call(g.drop_ports.add, 52)
    h = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    h.connect(rig.uds_path)
    h.sendall(b"CONNECT 52\n")
    assert_closed(h)
    # the guest saw a REQUEST, so it is told the stream is dead
    g.wait(lambda: g.received(OP_RST), TIMEOUT, "RST after the timeout")
    assert g.received(OP_RST)[0].src_port == g.received(OP_REQUEST)[0].src_port


# -- guest-initiated ------------------------------------------------------------------------

def test_guest_initiated_connect_and_data(rig):
    lst = host_listener(rig, 1234)
    s = rig.guest.connect(1234)
    c, _ = lst.accept()
    c.settimeout(TIMEOUT)
    assert rig.guest.received(OP_RESPONSE)[0].src_port == 1234
    up = os.urandom(700_000)
    s.send(up)
    assert recv_exact(c, len(up)) == up
    down = os.urandom(150_000)
    c.sendall(down)
    assert s.read(len(down)) == down
    # the guest closes both ways: host reader sees EOF, the guest gets its RST
    s.shutdown(SHUTDOWN_RCV | SHUTDOWN_SEND)
    assert_closed(c)
    s.wait_state("closed")
    rig.guest.wait(lambda: not rig.device.muxer.conns, TIMEOUT, "cleanup")
    c.close()
    lst.close()


def test_guest_connect_without_listener_gets_rst(rig):
    with pytest.raises(ConnectionRefusedError):
        rig.guest.connect(4321)
    assert rig.guest.received(OP_RST)[0].src_port == 4321
    assert not rig.device.muxer.conns


def test_packet_for_unknown_connection_gets_rst(rig):
    g = rig.guest
    g.call(g.send_packet, OP_RW, 5000, 7777, b"stray data")
    g.wait(lambda: g.received(OP_RST), TIMEOUT, "RST")
    rst = g.received(OP_RST)[0]
    assert (rst.src_cid, rst.dst_cid, rst.src_port, rst.dst_port) == (HOST_CID, 3, 7777, 5000)
    g.call(g.send_packet, OP_RST, 5001, 7777)  # an RST is never answered
    g.call(g.send_packet, OP_CREDIT_UPDATE, 5002, 7777)
    g.wait(lambda: len(g.received(OP_RST)) == 2, TIMEOUT, "second RST")
    time.sleep(0.1)
    assert [h.dst_port for h in g.received(OP_RST)] == [5000, 5002]


def test_bad_type_gets_rst(rig):
    lst = host_listener(rig, 1234)
    g = rig.guest
    g.call(lambda: g.send_packet(OP_REQUEST, 5000, 1234, type=2))  # SEQPACKET: not offered
    g.wait(lambda: g.received(OP_RST), TIMEOUT, "RST")
    assert not g.received(OP_RESPONSE)
    lst.settimeout(0.1)
    with pytest.raises(socket.timeout):
        lst.accept()
    lst.close()


def test_wrong_source_cid_is_dropped(rig):
    lst = host_listener(rig, 1234)
    g = rig.guest
    g.call(lambda: g.send_packet(OP_REQUEST, 5000, 1234, src_cid=99))
    time.sleep(0.2)
    assert not g.received() and not rig.device.muxer.conns
    assert rig.device.stats["bad_src_cid"] == 1
    lst.close()


# -- many streams ---------------------------------------------------------------------------

def test_fifty_host_initiated_streams_echo(rig):
    rig.guest.listen(52, echo=True)
    payloads = [os.urandom(20_000 + 997 * i) for i in range(50)]
    socks = [host_connect(rig, 52)[0] for _ in payloads]
    errors = []

    def worker(sock, data):
        try:  # send and read back concurrently so neither direction's window can stall
            t = threading.Thread(target=sock.sendall, args=(data,))
            t.start()
            got = recv_exact(sock, len(data))
            t.join(TIMEOUT)
            if got != data:
                errors.append("mismatch")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))
    threads = [threading.Thread(target=worker, args=a) for a in zip(socks, payloads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and not any(t.is_alive() for t in threads)
    assert len(rig.device.muxer.conns) == 50
    assert len({p for p in rig.device.muxer._ports}) == 50
    for s in socks:
        s.close()
    rig.guest.wait(lambda: all(st.peer_shut for st in rig.guest.streams.values()), TIMEOUT,
                   "SHUTDOWN on every stream")


def test_fifty_guest_initiated_streams_echo(rig):
    lst = host_listener(rig, 1234)
    stop = threading.Event()

    def echo_server():
        conns = []
        while not stop.is_set() and len(conns) < 50:
            try:
                c, _ = lst.accept()
            except socket.timeout:
                continue
            conns.append(c)
            threading.Thread(target=_echo, args=(c,), daemon=True).start()
    server = threading.Thread(target=echo_server, daemon=True)
    server.start()
    streams = [rig.guest.connect(1234) for _ in range(50)]
    data = [os.urandom(30_000 + 101 * i) for i in range(50)]
    for s, d in zip(streams, data):
        s.send(d)
    for s, d in zip(streams, data):
        assert s.read(len(d), timeout=15) == d
    stop.set()
    server.join(TIMEOUT)
    lst.close()


def _echo(c):
    c.settimeout(TIMEOUT)
    try:
        while True:
            b = c.recv(65536)
            if not b:
                return
            c.sendall(b)
    except OSError:
        pass
    finally:
        c.close()


# -- closing and resets ---------------------------------------------------------------------

def test_host_close_sends_shutdown_after_data(rig):
    g = rig.guest
    g.listen(52)
    h, _ = host_connect(rig, 52)
    s = g.accept(52)
    h.sendall(b"last words")
    h.close()
    assert s.read(10) == b"last words"
    g.wait(lambda: s.peer_shut == SHUTDOWN_RCV | SHUTDOWN_SEND, TIMEOUT, "SHUTDOWN")
    ops = [hdr.op for hdr, _ in g.packets if hdr.dst_port == 52]
    assert ops.index(OP_SHUTDOWN) > ops.index(OP_RW)
    s.shutdown()  # Linux would answer with RST; either way the device forgets the stream
    g.call(s.send_ctl, OP_RST)
    g.wait(lambda: not rig.device.muxer.conns, TIMEOUT, "cleanup")


def test_host_half_close_keeps_other_direction(rig):
    g = rig.guest
    g.listen(52)
    h, _ = host_connect(rig, 52)
    s = g.accept(52)
    h.shutdown(socket.SHUT_WR)
    g.wait(lambda: s.peer_shut, TIMEOUT, "SHUTDOWN")
    assert s.peer_shut == SHUTDOWN_SEND
    s.send(b"still talking")
    assert recv_exact(h, 13) == b"still talking"
    h.close()


def test_guest_shutdown_send_gives_host_eof(rig):
    lst = host_listener(rig, 1234)
    s = rig.guest.connect(1234)
    c, _ = lst.accept()
    c.settimeout(TIMEOUT)
    s.send(b"bye")
    s.shutdown(SHUTDOWN_SEND)
    assert recv_exact(c, 3) == b"bye"
    assert c.recv(10) == b""
    c.sendall(b"reply")  # the other direction still works
    assert s.read(5) == b"reply"
    c.close()
    lst.close()


def test_device_reset_closes_host_sockets(rig):
    g = rig.guest
    g.listen(52)
    h, _ = host_connect(rig, 52)
    g.accept(52)
    g.call(rig.transport.write, 0x70, 4, 0)  # driver resets the device
    assert_closed(h)
    g.wait(lambda: not rig.device.muxer.conns, TIMEOUT, "cleanup")
    g.start()  # the driver comes back: everything works again
    h, _ = host_connect(rig, 52)
    h.sendall(b"again")
    assert g.accept(52).read(5) == b"again"
    h.close()


def test_transport_reset_event(rig):
    g = rig.guest
    g.listen(52)
    h, _ = host_connect(rig, 52)
    g.accept(52)
    g.call(rig.device.transport_reset)
    g.wait(lambda: g.events, TIMEOUT, "event")
    assert g.events == [0]  # VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
    assert_closed(h)


def test_close_removes_socket_file(sockdir):
    path = os.path.join(sockdir, "v.sock")
    r = Rig(path)
    assert os.path.exists(path)
    r.close()
    assert not os.path.exists(path)
