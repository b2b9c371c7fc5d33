"""virtio-net: TX chains (virtio_net_hdr + frame, split anywhere, for the TAP or for
MMDS), RX buffers of any shape, frames arriving from the TAP (any size, any header),
raw descriptors and lying ring indices, with fuzz-chosen features (MRG_RXBUF, GUEST_CSUM,
offloads) and rate limiters, on a plain interface and on one that serves MMDS.

Properties: only VirtqueueError reaches the error boundary; TX chains come back with
length 0, RX chains with at most their writable bytes, each head in flight once; what
the device holds is bounded (a frame's chains ≤ the queue, MMDS connections, resets and
receive buffers within their limits); the loop settles (no TAP fd left spinning).
"""

from __future__ import annotations

from fuzz import common

with common.instrumented():
    from fuzz import devices, frames
    from fuzz.harness import Finding, Input, Rig, buffers
    from nodesvc.mmds import MmdsStack, tcp
    from nodesvc_virtio_net.constants import MAX_BUFFER_LEN, RX_QUEUE, TX_QUEUE

CLOCK = devices.Clock()
_SERVICE = devices.mmds(CLOCK)


def _mmds_stack():
    return MmdsStack(_SERVICE, clock=CLOCK, isn=lambda: frames.ISN)


def _make(with_mmds: bool):
    box = {}

    def make(loop):
        dev, box["tap"] = devices.net(loop, mmds_stack=_mmds_stack if with_mmds else None)
        if dev.mmds is not None:
            dev.mmds.clock = CLOCK     # the port's timer decisions and the stack: one clock
        return dev
    rig = Rig("net-mmds" if with_mmds else "net", make)
    rig.tap = box["tap"]
    return rig


RIGS = [_make(False), _make(True)]
HDR_SIZES = (12, 12, 12, 0, 1, 11, 13)


def vnet_hdr(inp: Input) -> bytes:
    if inp.u8() < 220:
        return bytes(12)
    return inp.bytes(inp.pick(HDR_SIZES)).ljust(12, b"\0")


def rx_size(inp: Input) -> int:
    return inp.pick((12, 64, 1526, 2048, 4096, 65562, 0, 1, 11)) if inp.u8() < 200 \
        else inp.int_in(0, 70000)


def check_bounds(rig: Rig) -> None:
    dev = rig.device
    if dev.rx is not None and len(dev.rx.held) > rig.queues[RX_QUEUE].size:
        raise Finding(f"RX holds {len(dev.rx.held)} chains on a queue of "
                      f"{rig.queues[RX_QUEUE].size}")
    stack = dev.mmds.stack if dev.mmds is not None else None
    if stack is not None:
        h = stack.tcp
        if len(h.connections) > h.max_connections or len(h.resets) > h.max_pending_resets:
            raise Finding(f"MMDS holds {len(h.connections)} connections, {len(h.resets)} resets")
        for conn, _ in h.connections.values():
            if len(conn.rbuf) > tcp.RCV_BUF_MAX_SIZE:
                raise Finding(f"MMDS receive buffer of {len(conn.rbuf)} bytes")


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    rig = inp.pick(RIGS)
    dev, tap = rig.device, rig.tap
    tap.drain()
    for which in ("rx", "tx"):
        lim = devices.limiter(inp)
        if lim is not None:
            lim.loop = rig.dloop
        dev._set_limiter(which, lim)
    if not rig.start(inp, sizes=(2, 4, 16, 256)):
        return
    rxq, txq = rig.queues[RX_QUEUE], rig.queues[TX_QUEUE]
    convs = [frames.Conversation(40000 + i) for i in range(2)]
    for _ in range(inp.int_in(1, 24)):
        op = inp.u8()
        if op < 60:                       # guest sends a frame
            frame = frames.guest_frame(inp, convs) if rig.device.mmds and inp.flag() \
                else inp.blob(2000)
            payload = vnet_hdr(inp) + frame
            if inp.u8() > 250:
                payload += bytes(MAX_BUFFER_LEN - len(payload) + inp.int_in(-1, 1))
            txq.add(buffers(inp, rig, payload, max_bufs=4), [], indirect=inp.u8() > 220)
        elif op < 100:                    # guest posts an RX buffer
            rxq.add([], buffers(inp, rig, rx_size(inp), max_bufs=3), indirect=inp.u8() > 220)
        elif op < 125:                    # a frame arrives on the TAP
            frame = inp.blob(2000) if inp.u8() < 250 else bytes(inp.int_in(60000, 70000))
            try:
                tap.host.send(vnet_hdr(inp) + frame)
            except (BlockingIOError, OSError):
                pass
        elif op < 175:
            rig.kick(inp.pick((RX_QUEUE, TX_QUEUE)))
        elif op < 185:
            q = inp.pick((rxq, txq))
            q.add_raw(inp) if inp.flag() else q.hostile_index(inp)
        elif op < 195:
            CLOCK.now += inp.pick((0.001, 0.31, 1.0, 11.0))
            rig.loop.run_once()
        elif op < 205:
            for lim in (dev.rx_limiter, dev.tx_limiter):
                if lim is not None:
                    lim.refill(ops=inp.int_in(0, 8), nbytes=inp.int_in(0, 1 << 16))
        else:
            rig.loop.run_once()
        rig.check()
        txq.reap(max_len=0)
        rxq.reap()
        check_bounds(rig)
    rig.kick(TX_QUEUE)
    rig.kick(RX_QUEUE)
    rig.loop.settle(rig.t.name)
    rig.check()
    txq.reap(max_len=0)
    rxq.reap()
    check_bounds(rig)


if __name__ == "__main__":
    common.main(test_one_input)
