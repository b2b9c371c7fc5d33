"""vsock: guest TX packets from fuzz bytes (every op, lying lengths, wrong CIDs/types,
credit fields at their extremes, headers split from payloads), RX and event buffers of
any shape, and a host side that the input drives too (accepting, writing to and closing
the connections the guest opens; host-initiated CONNECTs, good and bad).

Properties: only VirtqueueError reaches the error boundary; TX chains come back with
length 0 and RX chains with at most their writable bytes, each head once (a guest
posting RX buffers over 64 KiB may get packets that size: the spec lets the device fill
them); the muxer's
queues and tables stay within their limits (RSTs waiting, connections, held buffers,
per-connection buffering), no file descriptor is leaked across inputs; the loop settles.
"""

from __future__ import annotations

import socket
import struct

from fuzz import common

with common.instrumented():
    from fuzz import devices
    from fuzz.harness import Finding, Input, Rig, buffers, open_fds
    from nodesvc_vsock.connection import CONN_BUF
    from nodesvc_vsock.muxer import CTRLQ_MAX, MAX_CONNECTIONS
    from nodesvc_vsock.packet import HDR, HDR_SIZE, HOST_CID, MAX_PKT_PAYLOAD, TYPE_STREAM

RX, TX, EVT = 0, 1, 2
_box = {}


def _make(loop):
    dev, _box["path"], _box["listener"] = devices.vsock(loop)
    return dev


RIG = Rig("vsock", _make)
PATH, LISTENER = _box["path"], _box["listener"]
PORTS = (devices.HOST_PORT, devices.HOST_PORT, 4321, 1 << 30, (1 << 30) + 1)
HOST = {"accepted": [], "dialed": []}
BASELINE: list[int] = []


def packet(inp: Input) -> bytes:
    payload = inp.blob(600) if inp.u8() < 250 else bytes(inp.int_in(1, MAX_PKT_PAYLOAD + 8))
    k = inp.u8()
    length = len(payload) if k < 220 else inp.pick((0, len(payload) + 1, MAX_PKT_PAYLOAD + 1,
                                                    0xFFFFFFFF, inp.u32()))
    hdr = HDR.pack(devices.GUEST_CID if inp.u8() < 240 else inp.u64(),
                   HOST_CID if inp.u8() < 240 else inp.u64(),
                   inp.pick((5000, 5001, 5002)) if inp.u8() < 240 else inp.u32(),
                   inp.pick(PORTS) if inp.u8() < 240 else inp.u32(),
                   length, TYPE_STREAM if inp.u8() < 245 else inp.u16(),
                   inp.int_in(1, 7) if inp.u8() < 240 else inp.u16(),
                   inp.int_in(0, 3) if inp.u8() < 240 else inp.u32(),
                   inp.pick((CONN_BUF, 0, 1, 4096, 0xFFFFFFFF)) if inp.u8() < 240 else inp.u32(),
                   inp.pick((0, 100, 0xFFFFFFF0)) if inp.u8() < 240 else inp.u32())
    if inp.u8() > 245:
        hdr = hdr[:inp.int_in(0, HDR_SIZE)]
    return hdr + payload


def host_step(inp: Input) -> None:
    k = inp.u8()
    if k < 80:
        try:
            s, _ = LISTENER.accept()
            s.setblocking(False)
            HOST["accepted"].append(s)
        except BlockingIOError:
            pass
        return
    socks = HOST["accepted"] + HOST["dialed"]
    if k < 120:                          # a host process dials in
        if len(HOST["dialed"]) < 8:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            try:
                s.connect(PATH)
                line = (b"CONNECT %d\n" % inp.pick((5000, 5001, 52, 0, 2**32))
                        if inp.u8() < 220 else inp.blob(40))
                s.send(line)
            except OSError:
                pass
            HOST["dialed"].append(s)
    elif socks and k < 200:
        try:
            inp.pick(socks).send(inp.blob(3000) if inp.u8() < 250 else bytes(200000))
        except OSError:
            pass
    elif socks and k < 230:
        try:
            s = inp.pick(socks)
            s.recv(1 << 20)
        except OSError:
            pass
    elif socks:
        s = inp.pick(socks)
        try:
            s.shutdown(inp.pick((socket.SHUT_RD, socket.SHUT_WR, socket.SHUT_RDWR)))
        except OSError:
            pass


def close_host() -> None:
    for s in HOST["accepted"] + HOST["dialed"]:
        s.close()
    HOST["accepted"], HOST["dialed"] = [], []
    while True:                           # connections the guest opened, never accepted
        try:
            LISTENER.accept()[0].close()
        except BlockingIOError:
            break


def check_bounds(rig: Rig) -> None:
    dev = rig.device
    mux = dev.muxer
    if len(mux.ctrlq) > CTRLQ_MAX:
        raise Finding(f"{len(mux.ctrlq)} RSTs waiting (limit {CTRLQ_MAX})")
    if len(mux.conns) + len(mux._handshakes) > MAX_CONNECTIONS:
        raise Finding(f"{len(mux.conns)} connections + {len(mux._handshakes)} handshakes")
    for i, held in ((RX, dev._rx_bufs), (EVT, dev._evt_bufs)):
        if rig.queues and len(held) > rig.queues[i].size:
            raise Finding(f"queue {i}: {len(held)} chains held on a queue of "
                          f"{rig.queues[i].size}")
    for c in mux.conns.values():
        if len(c.tx_buf) > CONN_BUF + 64:
            raise Finding(f"connection {c.key} buffers {len(c.tx_buf)} bytes for the host")


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    rig = RIG
    close_host()
    if not rig.start(inp, sizes=(2, 4, 16, 256)):
        return
    rig.loop.settle("vsock")
    fds = open_fds()
    if not BASELINE:
        BASELINE.append(fds)
    elif fds > BASELINE[0] + 16:
        raise Finding(f"{fds - BASELINE[0]} more fds open than after the first input")
    rxq, txq, evq = rig.queues
    for _ in range(inp.int_in(1, 32)):
        op = inp.u8()
        if op < 70:
            txq.add(buffers(inp, rig, packet(inp), max_bufs=3), [], indirect=inp.u8() > 230)
        elif op < 100:
            size = inp.pick((HDR_SIZE + 4096, HDR_SIZE + 64, HDR_SIZE, HDR_SIZE - 1, 0, 70000)) \
                if inp.u8() < 230 else inp.int_in(0, 70000)
            rxq.add([], buffers(inp, rig, size, max_bufs=3), indirect=inp.u8() > 230)
        elif op < 105:
            evq.add([], buffers(inp, rig, inp.pick((4, 8, 3, 0)), max_bufs=2))
        elif op < 150:
            host_step(inp)
        elif op < 195:
            rig.kick(inp.pick((RX, TX, TX, EVT)))
        elif op < 203:
            q = inp.pick((rxq, txq, evq))
            q.add_raw(inp) if inp.flag() else q.hostile_index(inp)
        else:
            rig.loop.run_once()
        rig.check()
        txq.reap(max_len=0)
        rxq.reap()
        evq.reap(max_len=4)
        check_bounds(rig)
    rig.kick(TX)
    rig.loop.settle("vsock")
    rig.check()
    txq.reap(max_len=0)
    rxq.reap()
    check_bounds(rig)


if __name__ == "__main__":
    common.main(test_one_input)
