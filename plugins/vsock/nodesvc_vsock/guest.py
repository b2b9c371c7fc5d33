"""The guest half of a vsock device, in process: for tests and benchmarks only.

A virtio driver (nodesvc.testing.GuestDriver) plus just enough of Linux's vsock
transport on top — handshakes, credit accounting, SHUTDOWN/RST — to drive the
device exactly as a guest would, through real rings in real guest memory. All of
its state lives on the event-loop thread (the device's thread, as interrupts
would be handled on a vCPU); the test thread calls in through `call()` and
waits with `wait()`.
"""

from __future__ import annotations

import collections
import itertools
import threading

from nodesvc.vmm.virtio import VirtioMmioTransport
from nodesvc.testing import GuestDriver

from .guest_stream import GuestStream
from .packet import (HDR, HDR_SIZE, HOST_CID, OP_REQUEST, OP_RESPONSE, OP_RST, TYPE_STREAM,
                     Header)

RX, TX, EVT = 0, 1, 2


class GuestIrq:
    """The device's interrupt line: schedules the guest's handler on the loop (coalesced)."""

    gsi = 0

    def __init__(self, loop):
        self.loop, self.handler, self.count, self._armed = loop, None, 0, False

    def trigger(self) -> None:
        self.count += 1
        if not self._armed and self.handler is not None:
            self._armed = True
            self.loop.call_soon(self._fire)

    def _fire(self) -> None:
        self._armed = False
        self.handler()


class GuestVsock:
    def __init__(self, transport, memory, loop, irq: GuestIrq, cid: int = 3, *,
                 rx_buffers: int = 128, rx_buf_size: int = 4096, tx_slots: int = 64,
                 tx_buf_size: int = 64 * 1024, split: bool = False, record: bool = True):
        self.transport, self.memory, self.loop, self.cid = transport, memory, loop, cid
        self.rx_buffers, self.rx_buf_size, self.split = rx_buffers, rx_buf_size, split
        self.tx_slots, self.tx_buf_size, self.record = tx_slots, tx_buf_size, record
        self.drv = GuestDriver(transport, memory)
        irq.handler = self._service
        self.cond = threading.Condition()
        self.packets: list[tuple[Header, bytes]] = []    # everything received (if `record`)
        self.events: list[int] = []
        self.streams: dict[tuple[int, int], GuestStream] = {}
        self.listening: dict[int, dict] = {}
        self.drop_ports: set[int] = set()    # REQUESTs to these ports go unanswered
        self.accepted: dict[int, collections.deque] = {}
        self._ports = itertools.count(50000)
        self._tx_free: list[int] = []
        self._tx_inflight: dict[int, int] = {}
        self._rx_addr: dict[int, int] = {}
        self._txq: collections.deque = collections.deque()

    # -- threading ------------------------------------------------------------------------
    def call(self, fn, *args, timeout: float = 5.0, **kwargs):
        """Run `fn(*args, **kwargs)` on the loop thread and return its result."""
        done, box = threading.Event(), {}

        def run():
            try:
                box["r"] = fn(*args, **kwargs)
            except BaseException as e:  # re-raised on the caller's thread
                box["e"] = e
            done.set()
        self.loop.call_soon(run)
        if not done.wait(timeout):
            raise TimeoutError(f"loop did not run {fn.__name__} within {timeout}s")
        if "e" in box:
            raise box["e"]
        return box.get("r")

    def wait(self, pred, timeout: float = 5.0, what: str = "condition") -> None:
        with self.cond:
            if not self.cond.wait_for(pred, timeout):
                raise TimeoutError(f"guest: {what} not met within {timeout}s")

    def _notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    # -- bring-up -------------------------------------------------------------------------
    def start(self, **init_args) -> None:
        self.call(self._start, init_args)

    def _start(self, init_args) -> None:
        self.drv.init(**init_args)  # (re)start: whatever the old rings held is gone
        self._rx_addr, self._tx_inflight = {}, {}
        self._txq.clear()
        self.streams.clear()
        self.accepted.clear()
        self._add_rx_buffers(self.rx_buffers)
        size = HDR_SIZE + self.tx_buf_size
        self._tx_free = [self.drv.alloc(size, 8) for _ in range(self.tx_slots)]
        evt = self.drv.alloc(16, 8)
        self.drv.queues[EVT].add([], [(evt, 4)])
        self.drv.queues[EVT].kick()
        self.event_addr = evt

    def _add_rx_buffers(self, n: int) -> None:
        for _ in range(n):
            addr = self.drv.alloc(HDR_SIZE + self.rx_buf_size, 8)
            self._rx_addr[self._post_rx(addr)] = addr
        self.drv.queues[RX].kick()

    def post_rx_buffers(self, n: int) -> None:
        """Give the device `n` more RX buffers (test thread)."""
        self.call(self._add_rx_buffers, n)

    def _post_rx(self, addr: int) -> int:
        if self.split:  # older Linux: header and data in separate descriptors
            bufs = [(addr, HDR_SIZE), (addr + HDR_SIZE, self.rx_buf_size)]
        else:
            bufs = [(addr, HDR_SIZE + self.rx_buf_size)]
        return self.drv.queues[RX].add([], bufs)

    # -- sending ----------------------------------------------------------------------------
    def send_packet(self, op: int, src_port: int, dst_port: int, payload: bytes = b"", *,
                    flags: int = 0, buf_alloc: int = 0, fwd_cnt: int = 0, dst_cid: int = HOST_CID,
                    src_cid: int | None = None, type: int = TYPE_STREAM,
                    length: int | None = None) -> None:
        """Queue one raw packet (loop thread). `length` overrides hdr.len, for lying guests."""
        n = len(payload) if length is None else length
        hdr = Header(self.cid if src_cid is None else src_cid, dst_cid, src_port, dst_port, n,
                     type, op, flags, buf_alloc, fwd_cnt)
        self._txq.append((hdr, payload))
        self._flush_tx()

    def _flush_tx(self) -> None:
        q, mem, sent = self.drv.queues[TX], self.memory, False
        while self._txq and self._tx_free:
            hdr, payload = self._txq.popleft()
            addr = self._tx_free.pop()
            HDR.pack_into(mem.view(addr, HDR_SIZE), 0, *hdr)
            mem.view(addr + HDR_SIZE, len(payload))[:] = payload
            if self.split and payload:
                head = q.add([(addr, HDR_SIZE), (addr + HDR_SIZE, len(payload))], [])
            else:
                head = q.add([(addr, HDR_SIZE + len(payload))], [])
            self._tx_inflight[head] = addr
            sent = True
        if sent:
            q.kick()

    def tx_space(self) -> bool:
        return not self._txq and bool(self._tx_free)

    # -- receiving (interrupt handler) ------------------------------------------------------
    def _service(self) -> None:
        qs, mem = self.drv.queues, self.memory
        for head, _ in qs[TX].take_used():
            self._tx_free.append(self._tx_inflight.pop(head))
        got = []
        for head, n in qs[RX].take_used():
            addr = self._rx_addr.pop(head)
            hdr = Header(*HDR.unpack_from(mem.view(addr, HDR_SIZE)))
            n = min(hdr.len, max(0, n - HDR_SIZE))
            got.append((addr, hdr, mem.view(addr + HDR_SIZE, n)))
        for _, hdr, payload in got:  # payload is a view: streams copy what they keep
            if self.record:
                self.packets.append((hdr, bytes(payload)))
            self._on_packet(hdr, payload)
        for addr, _, _ in got:  # repost only now, after every view into them is done with
            self._rx_addr[self._post_rx(addr)] = addr
        for head, _ in qs[EVT].take_used():
            self.events.append(int.from_bytes(mem.view(self.event_addr, 4), "little"))
        if got:
            qs[RX].kick()
        self._flush_tx()
        for s in list(self.streams.values()):
            s.pump()
        self._notify()

    def _on_packet(self, hdr: Header, payload: bytes) -> None:
        key = (hdr.dst_port, hdr.src_port)
        s = self.streams.get(key)
        if hdr.dst_port in self.drop_ports:
            return
        if hdr.op == OP_REQUEST and s is None and hdr.dst_port in self.listening:
            opts = self.listening[hdr.dst_port]
            s = GuestStream(self, hdr.dst_port, hdr.src_port, **opts)
            s.state = "open"
            self.streams[key] = s
            s.on_packet(hdr, payload)
            s.send_ctl(OP_RESPONSE)
            self.accepted.setdefault(hdr.dst_port, collections.deque()).append(s)
        elif s is not None:
            s.on_packet(hdr, payload)
        elif hdr.op != OP_RST:
            self.send_packet(OP_RST, hdr.dst_port, hdr.src_port)  # like Linux: nobody here

    # -- sockets API (test thread) ----------------------------------------------------------
    def listen(self, port: int, **stream_opts) -> None:
        self.call(self.listening.__setitem__, port, stream_opts)

    def accept(self, port: int, timeout: float = 5.0) -> GuestStream:
        self.wait(lambda: self.accepted.get(port), timeout, f"a connection on port {port}")
        return self.call(self.accepted[port].popleft)

    def connect(self, port: int, timeout: float = 5.0, **stream_opts) -> GuestStream:
        def start():
            s = GuestStream(self, next(self._ports), port, **stream_opts)
            self.streams[s.key] = s
            s.send_ctl(OP_REQUEST)
            return s
        s = self.call(start)
        self.wait(lambda: s.state != "connecting", timeout, f"connect to port {port}")
        if s.state != "open":
            raise ConnectionRefusedError(f"guest connect to host port {port}: {s.state}")
        return s

    def received(self, op: int | None = None) -> list[Header]:
        return [h for h, _ in list(self.packets) if op is None or h.op == op]


def make_rig(device, memory, loop, cid: int = 3, **guest_opts):
    """A transport for `device` and a GuestVsock driving it (started)."""
    irq = GuestIrq(loop)
    t = VirtioMmioTransport(device, memory=memory, irq=irq, event_loop=loop, name="vsock")
    g = GuestVsock(t, memory, loop, irq, cid, **guest_opts)
    g.start()
    return t, g


class Rig:
    """Event-loop thread, guest memory, device at `uds_path`, started guest; `close()` ends all."""

    def __init__(self, uds_path: str, cid: int = 3, mem_mib: int = 32, device_opts=None,
                 **guest_opts):
        from nodesvc.vmm.eventloop import EventLoop
        from nodesvc.vmm.memory import GuestMemory

        from .device import VsockDevice
        self.uds_path = uds_path
        self.errors: list[BaseException] = []   # exceptions that escaped into the event loop
        self.loop = EventLoop(on_error=self.errors.append)
        self.loop.start("vsock-test-loop")
        self.memory = GuestMemory(mem_mib << 20)
        self.device = VsockDevice(cid, uds_path, self.loop, **(device_opts or {}))
        self.transport, self.guest = make_rig(self.device, self.memory, self.loop, cid,
                                              **guest_opts)

    def close(self) -> None:
        try:
            self.guest.call(lambda: (self.transport.close(), self.device.close()))
        finally:
            self.loop.close()
            self.memory.close()

    def __enter__(self) -> "Rig":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
