"""virtio-rng requests: writable chains of any shape and size (zero-length, huge, split,
indirect, readable buffers mixed in, raw descriptors, lying indices) with and without a
rate limiter that runs dry and refills.

Properties: only VirtqueueError reaches the error boundary; each used entry is a head in
flight once, with a length within its writable bytes and at most MAX_FILL; the bytes
served are what the used ring says; the loop settles.
"""

from __future__ import annotations

from fuzz import common

with common.instrumented():
    from fuzz import devices
    from fuzz.harness import Finding, Input, Rig, buffers
    from nodesvc_virtio_rng.device import MAX_FILL

RIG = Rig("rng", devices.rng)


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    rig, dev = RIG, RIG.device
    lim = devices.limiter(inp)
    if lim is not None:
        lim.loop = rig.dloop
    dev._set_limiter(lim)
    if not rig.start(inp):
        return
    q = rig.queues[0]
    served, reported = dev.bytes_served, 0
    for _ in range(inp.int_in(1, 24)):
        op = inp.u8()
        if op < 120:
            size = inp.pick((16, 64, 0, 1, MAX_FILL, MAX_FILL + 1)) if inp.u8() < 200 \
                else inp.length() % 200000
            readable = buffers(inp, rig, inp.blob(16)) if inp.u8() > 230 else []
            q.add(readable, buffers(inp, rig, size, max_bufs=4), indirect=inp.u8() > 220)
        elif op < 135:
            q.add_raw(inp)
        elif op < 140:
            q.hostile_index(inp)
        elif op < 220:
            rig.kick(0)
        elif op < 240 and lim is not None:
            lim.refill(ops=inp.int_in(0, 8), nbytes=inp.int_in(0, 1 << 17))
        else:
            rig.loop.run_once()
        rig.check()
        reported += sum(n for _, n in q.reap(max_len=MAX_FILL))
    rig.kick(0)
    rig.loop.settle("rng")
    rig.check()
    reported += sum(n for _, n in q.reap(max_len=MAX_FILL))
    if not q.tainted and dev.bytes_served - served != reported:
        raise Finding(f"served {dev.bytes_served - served} bytes, used ring says {reported}")


if __name__ == "__main__":
    common.main(test_one_input)
