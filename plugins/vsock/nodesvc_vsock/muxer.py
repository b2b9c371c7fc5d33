"""The host side of the device: the VM's Unix socket, connection table and RX scheduling.

Like Firecracker's muxer it owns a private epoll set (listener, handshakes,
connection sockets, a timer) and joins the VMM event loop with that single fd,
so it can ask for writability and change interest without touching the loop.
Everything runs on the event-loop thread and never blocks.

Host-initiated: a host process connects to `uds_path` and sends `CONNECT <port>\\n`;
we pick a host port (≥ 2**30), send REQUEST to the guest, and on its RESPONSE
write `OK <hostport>\\n` and splice. Guest-initiated: a REQUEST to CID 2 port P
connects to `<uds_path>_<P>`: RESPONSE on success, RST otherwise.
"""

from __future__ import annotations

import collections
import logging
import select
import socket
import time

from nodesvc.vmm.timerfd import TimerFd

from .connection import DEAD, LOCAL_INIT, PEER_INIT, Connection
from .packet import HOST_CID, OP_REQUEST, OP_RST, TYPE_STREAM, U32, Header
from . import uds

log = logging.getLogger("nodesvc.vsock")

MAX_CONNECTIONS = 1023       # streams + pending handshakes (Firecracker's limit)
CTRLQ_MAX = 256              # stand-alone RSTs waiting for RX buffers; beyond it TX pauses
FIRST_HOST_PORT = 1 << 30
_EV_IN = select.EPOLLIN


class Muxer:
    def __init__(self, guest_cid: int, uds_path: str, event_loop, *, on_activity=None,
                 connect_timeout: float = 2.0, tick: float = 0.1):
        self.guest_cid, self.uds_path, self.loop = guest_cid, str(uds_path), event_loop
        self.on_activity = on_activity or (lambda: None)
        self.connect_timeout = connect_timeout
        self.conns: dict[tuple[int, int], Connection] = {}
        self.rxq: dict[tuple[int, int], None] = {}   # ordered set: connections with pending rx
        self.ctrlq: collections.deque[Header] = collections.deque()
        self.stats = collections.Counter()
        self._handshakes: dict[int, uds.Handshake] = {}
        self._handlers: dict[int, object] = {}
        self._registered: dict[int, int] = {}
        self._next_port = FIRST_HOST_PORT
        self._ports: set[int] = set()
        self._listen_paused = False
        self.epoll = select.epoll()
        self.timer = TimerFd()    # in our own epoll set, ticking while anything can time out
        self._tick_ns = int(tick * 1e9)
        self.listener, self._inode = uds.listen(self.uds_path)
        self._watch(self.listener.fileno(), _EV_IN, self._accept)
        self._watch(self.timer.fd, _EV_IN, self._tick)
        if event_loop is not None:
            event_loop.add_reader(self.epoll.fileno(), self.process_host_events)

    # -- epoll bookkeeping ------------------------------------------------------------------
    def _watch(self, fd: int, events: int | None, handler=None) -> None:
        have = self._registered.get(fd)
        if handler is not None:
            self._handlers[fd] = handler
        if events == have:
            return
        if events is None:
            self._registered.pop(fd, None)
            self._handlers.pop(fd, None)
            try:
                self.epoll.unregister(fd)
            except OSError:
                pass
        elif have is None:
            self.epoll.register(fd, events)
            self._registered[fd] = events
        else:
            self.epoll.modify(fd, events)
            self._registered[fd] = events

    def process_host_events(self, _events: int = 0) -> None:
        """The muxer's epoll fd is readable (event-loop thread)."""
        for fd, ev in self.epoll.poll(0):
            handler = self._handlers.get(fd)
            if handler is not None:
                handler(ev)
        self.on_activity()

    def _tick(self, _ev: int) -> None:
        self.timer.clear()
        now = time.monotonic()
        if self._listen_paused:
            self._listen_paused = False
            self._watch(self.listener.fileno(), _EV_IN)
        for fd, hs in list(self._handshakes.items()):
            if hs.deadline <= now:
                self.stats["connect_timeouts"] += 1
                self._drop_handshake(fd)
        for conn in list(self.conns.values()):
            if conn.deadline is not None and conn.deadline <= now:
                self.stats["conn_timeouts"] += 1
                conn.expire()
                self._sync(conn)
        if not self._handshakes and all(c.deadline is None for c in self.conns.values()):
            self.timer.disarm()

    # -- host-initiated connections ---------------------------------------------------------
    def _accept(self, _ev: int) -> None:
        for _ in range(64):  # bounded: the loop has other work too
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: pause (or the level-triggered
                log.warning("vsock: accept on %s failed: %s", self.uds_path, e)  # fd spins)
                self._listen_paused = True
                self._watch(self.listener.fileno(), 0)
                self.timer.start_periodic(self._tick_ns)  # the next tick listens again
                return
            if len(self.conns) + len(self._handshakes) >= MAX_CONNECTIONS:
                self.stats["refused_full"] += 1
                sock.close()
                continue
            sock.setblocking(False)
            fd = sock.fileno()
            self._handshakes[fd] = uds.Handshake(sock, time.monotonic() + self.connect_timeout)
            self._watch(fd, _EV_IN, lambda ev, fd=fd: self._on_handshake(fd, ev))
            self.timer.start_periodic(self._tick_ns)

    def _drop_handshake(self, fd: int) -> None:
        hs = self._handshakes.pop(fd)
        self._watch(fd, None)
        hs.sock.close()

    def _on_handshake(self, fd: int, ev: int) -> None:
        hs = self._handshakes[fd]
        port = hs.read()
        if port is uds.WAIT:
            return
        if port is None:
            self.stats["bad_connect"] += 1
            self._drop_handshake(fd)
            return
        del self._handshakes[fd]
        self._watch(fd, None)
        conn = Connection(hs.sock, self.guest_cid, self._alloc_port(port), port, LOCAL_INIT,
                          deadline=hs.deadline)
        self._ports.add(conn.local_port)
        self._add(conn)

    def _alloc_port(self, peer_port: int) -> int:
        while True:  # at most MAX_CONNECTIONS ports are taken, so this ends quickly
            port = self._next_port
            self._next_port = port + 1 if port < U32 else FIRST_HOST_PORT
            if port not in self._ports and (port, peer_port) not in self.conns:
                return port

    # -- guest → host ---------------------------------------------------------------------
    def can_accept_tx(self) -> bool:
        """False while replies are backed up: TX waits for the guest to post RX buffers."""
        return len(self.ctrlq) < CTRLQ_MAX

    def from_guest(self, hdr: Header, views) -> None:
        if hdr.src_cid != self.guest_cid:
            self.stats["bad_src_cid"] += 1  # spoofed or confused: nobody to answer
            return
        if hdr.dst_cid != HOST_CID or hdr.type != TYPE_STREAM:
            self.stats["bad_dst_or_type"] += 1
            self._reply_rst(hdr)
            return
        conn = self.conns.get((hdr.dst_port, hdr.src_port))
        if conn is None:
            if hdr.op == OP_REQUEST:
                self._guest_connect(hdr)
            else:
                self._reply_rst(hdr)
            return
        if hdr.op == OP_REQUEST:
            conn.kill()  # the guest lost track of this stream
        else:
            conn.on_guest_packet(hdr, views)
        self._sync(conn)

    def _reply_rst(self, hdr: Header) -> None:
        if hdr.op == OP_RST:
            return  # never answer an RST with an RST
        if len(self.ctrlq) >= CTRLQ_MAX:
            self.stats["rst_dropped"] += 1
            return
        self.ctrlq.append(Header(hdr.dst_cid, hdr.src_cid, hdr.dst_port, hdr.src_port, 0,
                                 TYPE_STREAM, OP_RST, 0, 0, 0))

    def _guest_connect(self, hdr: Header) -> None:
        if len(self.conns) + len(self._handshakes) >= MAX_CONNECTIONS:
            self.stats["refused_full"] += 1
            self._reply_rst(hdr)
            return
        sock = None
        try:  # AF_UNIX connect never goes "in progress": it works, or fails now (incl. EAGAIN)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                                 | socket.SOCK_CLOEXEC)
            sock.connect(f"{self.uds_path}_{hdr.dst_port}")
        except OSError:
            if sock is not None:
                sock.close()
            self.stats["guest_connect_refused"] += 1
            self._reply_rst(hdr)
            return
        conn = Connection(sock, self.guest_cid, hdr.dst_port, hdr.src_port, PEER_INIT)
        conn.peer_buf_alloc, conn.peer_fwd_cnt = hdr.buf_alloc, hdr.fwd_cnt
        self._add(conn)

    # -- connection table -------------------------------------------------------------------
    def _add(self, conn: Connection) -> None:
        self.conns[conn.key] = conn
        self._watch(conn.fd, conn.interest(), lambda ev, c=conn: self._on_conn_event(c, ev))
        self._sync(conn)

    def _on_conn_event(self, conn: Connection, ev: int) -> None:
        conn.on_host_event(ev)
        self._sync(conn)

    def _sync(self, conn: Connection) -> None:
        """Bring epoll, the RX schedule and the table in line with the connection's state."""
        if conn.state == DEAD:
            if conn.sock is not None:  # once only: the fd number may be reused afterwards
                self._watch(conn.fd, None)
                conn.sock.close()
                conn.sock = None
            if not conn.pending:
                self._remove(conn)
                return
        else:
            self._watch(conn.fd, conn.interest())
        if conn.pending:
            self.rxq[conn.key] = None
        if conn.deadline is not None:
            self.timer.start_periodic(self._tick_ns)

    def _remove(self, conn: Connection) -> None:
        if self.conns.get(conn.key) is conn:
            del self.conns[conn.key]
        self.rxq.pop(conn.key, None)
        if conn.host_initiated:
            self._ports.discard(conn.local_port)

    # -- host → guest -----------------------------------------------------------------------
    def has_pending(self) -> bool:
        return bool(self.ctrlq or self.rxq)

    def fill(self, buf) -> Header | None:
        """The next packet for the guest, written into RX buffer `buf`; None when idle."""
        if self.ctrlq:
            return self.ctrlq.popleft()
        for _ in range(len(self.rxq)):  # each connection at most once per call: no spinning
            key = next(iter(self.rxq))
            del self.rxq[key]
            conn = self.conns.get(key)
            if conn is None:
                continue
            hdr = conn.fill(buf)
            self._sync(conn)  # re-queues it at the back (round-robin) if it has more
            if hdr is not None:
                return hdr
        return None

    # -- lifecycle --------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every stream without telling the guest (its driver was reset)."""
        for conn in list(self.conns.values()):
            conn.kill(rst=False)
            self._sync(conn)
        self.rxq.clear()
        self.ctrlq.clear()

    def close(self) -> None:
        if self.listener is None:
            return  # closed already (the VMM closes transports, then devices)
        self.reset()
        for fd in list(self._handshakes):
            self._drop_handshake(fd)
        if self.loop is not None:
            self.loop.remove_reader(self.epoll.fileno())
        uds.unlink_if_ours(self.uds_path, self._inode)
        self.listener.close()
        self.listener = None
        self.timer.close()
        self.epoll.close()
