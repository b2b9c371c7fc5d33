"""virtio-mmio register accesses: a random register/value/size stream (with queue kicks
and loop turns mixed in) against the real transport in front of a real device (rng, blk,
net or vsock), over guest memory partly filled from fuzz bytes.

Properties: no exception leaves `read`/`write`; reads return an int that fits the access;
only VirtqueueError reaches the device's error boundary; a failed device shows
NEEDS_RESET and is not active; the event loop settles (bounded work per input).
"""

from __future__ import annotations

from fuzz import common

with common.instrumented():
    from fuzz import devices
    from fuzz.harness import MEM_SIZE, RING_START, Finding, Input, Rig, wipe
    from nodesvc.testing import GuestAllocator, GuestDriver
    from nodesvc.vmm.virtio import constants as V

REGS = (V.MAGIC, V.VERSION, V.DEVICE_ID, V.VENDOR_ID, V.DEVICE_FEATURES,
        V.DEVICE_FEATURES_SEL, V.DRIVER_FEATURES, V.DRIVER_FEATURES_SEL, V.QUEUE_SEL,
        V.QUEUE_NUM_MAX, V.QUEUE_NUM, V.QUEUE_READY, V.QUEUE_NOTIFY, V.INTERRUPT_STATUS,
        V.INTERRUPT_ACK, V.STATUS, V.QUEUE_DESC_LOW, V.QUEUE_DESC_HIGH, V.QUEUE_AVAIL_LOW,
        V.QUEUE_AVAIL_HIGH, V.QUEUE_USED_LOW, V.QUEUE_USED_HIGH, V.SHM_SEL, V.SHM_LEN_LOW,
        V.SHM_LEN_HIGH, V.CONFIG_GENERATION, V.CONFIG, V.CONFIG + 4, V.CONFIG + 8)
STATUS_STEPS = (0, V.S_ACKNOWLEDGE, V.S_ACKNOWLEDGE | V.S_DRIVER,
                V.S_ACKNOWLEDGE | V.S_DRIVER | V.S_FEATURES_OK,
                V.S_ACKNOWLEDGE | V.S_DRIVER | V.S_FEATURES_OK | V.S_DRIVER_OK,
                V.S_FAILED, V.S_NEEDS_RESET)
ADDR_REGS = (V.QUEUE_DESC_LOW, V.QUEUE_AVAIL_LOW, V.QUEUE_USED_LOW)


def _rigs():
    clock = devices.Clock()
    out = [Rig("rng", devices.rng), Rig("blk", devices.blk)]
    out.append(Rig("net", lambda loop: devices.net_with_mmds(loop, clock)[0]))
    out.append(Rig("vsock", lambda loop: devices.vsock(loop)[0]))
    return out


RIGS = _rigs()


def value_for(inp: Input, off: int) -> int:
    k = inp.u8()
    if k >= 200:
        return inp.u32()
    if off == V.STATUS:
        return inp.pick(STATUS_STEPS) | (inp.u8() if k < 20 else 0)
    if off in ADDR_REGS:
        return inp.int_in(0, MEM_SIZE >> 4) << 4
    if off == V.QUEUE_NUM:
        return inp.pick((0, 1, 2, 3, 4, 8, 16, 256, 512, 0xFFFF, 0x10000))
    if off in (V.QUEUE_SEL, V.QUEUE_NOTIFY, V.DEVICE_FEATURES_SEL, V.DRIVER_FEATURES_SEL,
               V.SHM_SEL):
        return inp.int_in(0, 3)
    return inp.u32()


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    rig = inp.pick(RIGS)
    t, mem = rig.t, rig.mem
    t.write(V.STATUS, 4, 0)               # every input starts from a reset device
    rig.loop.settle(t.name)
    wipe(mem)
    view = mem.regions[0].view
    for _ in range(inp.int_in(0, 6)):     # garbage where rings are likely to be put
        a = inp.int_in(0, (MEM_SIZE >> 4) - 64) << 4
        chunk = inp.blob(512)
        view[a:a + len(chunk)] = chunk
    if inp.flag():                        # a proper bring-up first, then the stream
        drv = GuestDriver(t, mem, GuestAllocator(mem, RING_START))
        try:
            drv.init(features=drv.device_features() & inp.u64() | 1 << V.F_VERSION_1,
                     queue_size=inp.pick((1, 2, 4, 16, 256)))
        except RuntimeError:
            pass                          # features refused: fine, the stream goes on
    for _ in range(inp.int_in(0, 64)):
        op = inp.u8()
        if op < 110:
            off = inp.pick(REGS) if inp.u8() < 230 else inp.int_in(0, 0xFFF)
            size = inp.pick((4, 4, 4, 4, 1, 2, 8))
            t.write(off, size, value_for(inp, off))
        elif op < 200:
            off = inp.pick(REGS) if inp.u8() < 230 else inp.int_in(0, 0xFFF)
            size = inp.pick((4, 4, 4, 1, 2, 8))
            v = t.read(off, size)
            if not isinstance(v, int) or not 0 <= v < 1 << (8 * size):
                raise Finding(f"read({off:#x}, {size}) returned {v!r}")
        elif op < 240:
            rig.kick(inp.int_in(0, len(t.queues)))
        else:
            rig.loop.run_once()
        rig.check()
        if t.failure is not None and (t.active or not t.status & V.S_NEEDS_RESET):
            raise Finding(f"failed device ({t.failure}) is active={t.active}, "
                          f"status={t.status:#x}")
    rig.loop.settle(t.name)
    rig.check()


if __name__ == "__main__":
    common.main(test_one_input)
