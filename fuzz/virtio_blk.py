"""virtio-blk requests: header/data/status chains built from fuzz bytes (any type and
sector, headers split or short, data of any size and shape, the status byte alone, in the
last data buffer, zero-length or missing, indirect tables, raw descriptors, lying ring
indices), against a read-write, a read-only and a writeback drive, with and without a
rate limiter.

Properties: only VirtqueueError reaches the error boundary; every used entry is a head in
flight, at most once, with a length within its writable buffers; a completed request's
status is OK/IOERR/UNSUPP, and an OK read holds the file's bytes; a read-only drive never
completes a write with OK; requests beyond the capacity fail; the loop settles.
"""

from __future__ import annotations

import os
import struct

from fuzz import common

with common.instrumented():
    from fuzz import devices
    from fuzz.harness import Finding, Input, Rig, buffers
    from nodesvc_virtio_blk.device import S_IOERR, S_OK, S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT

HDR = struct.Struct("<IIQ")
RIGS = [Rig("blk-rw", devices.blk),
        Rig("blk-ro", lambda loop: devices.blk(loop, read_only=True)),
        Rig("blk-wb", lambda loop: devices.blk(loop, writeback=True))]
CAP = devices.DISK_SECTORS


def _sector(inp: Input) -> int:
    k = inp.u8()
    if k < 150:
        return inp.int_in(0, CAP - 1)
    if k < 220:
        return inp.pick((CAP - 1, CAP, CAP + 1, 2**55, 2**63, 2**64 - 1))
    return inp.u64()


def _data_len(inp: Input) -> int:
    return inp.int_in(0, 8) * 512 if inp.u8() < 200 else inp.length() % 70000


def request(inp: Input, rig: Rig) -> None:
    hostile = rig.bump.hostile
    rtype = inp.pick((T_IN, T_IN, T_OUT, T_OUT, T_FLUSH, T_GET_ID)) if inp.u8() < 240 \
        else inp.u32()
    sector = _sector(inp)
    hdr = HDR.pack(rtype, inp.u32() if inp.u8() > 240 else 0, sector)
    intact = True             # the header is exactly what rtype/sector say
    if inp.u8() > 230:
        hdr = hdr[:inp.int_in(0, 16)] + inp.blob(8)   # short or long header
        intact = False
    nbytes = _data_len(inp)
    readable_bytes = hdr + (inp.bytes(nbytes) + bytes(nbytes))[:nbytes] if rtype == T_OUT else hdr
    readable = buffers(inp, rig, readable_bytes, max_bufs=4)
    shape = inp.u8()
    writable_len = nbytes if rtype in (T_IN, T_GET_ID) else 0
    if rtype == T_GET_ID and inp.flag():
        writable_len = inp.int_in(0, 40)
    writable = buffers(inp, rig, writable_len, max_bufs=3) if writable_len else []
    status = None
    if shape < 200:                       # Linux: a 1-byte status buffer last
        a = rig.bump.alloc(1)
        if a is None:
            return
        writable.append((a, 1))
        status = a
    elif shape < 220 and writable:        # status is the last byte of the last data buffer
        a, n = writable[-1]
        writable[-1] = (a, n + 1) if rig.bump.alloc(1) is not None else (a, n)
        status = a + n if writable[-1][1] == n + 1 else None
    elif shape < 235:
        writable.append((rig.bump.alloc(1) or 0, 0))   # zero-length "status": none at all
    q = rig.queues[0]
    head = q.add(readable, writable, indirect=inp.u8() > 200)
    if rtype == T_OUT:
        rig.may_write = True
    if head is not None and status is not None and rig.bump.hostile == hostile:
        rig.meta[head] = (rtype, sector, nbytes, writable[:-1] if shape < 200 else None,
                          status, intact)


def check_completed(rig: Rig, used, dev) -> None:
    view = rig.mem.regions[0].view
    for head, _ in used:
        meta = rig.meta.pop(head, None)
        if meta is None:
            continue
        rtype, sector, nbytes, data, status_addr, full_hdr = meta
        st = view[status_addr]
        if rig.queues[0].tainted or rig.bump.hostile:
            continue             # raw chains or a stretched buffer may have written over
                                 # other requests (their headers, status bytes) too
        if st not in (S_OK, S_IOERR, S_UNSUPP):
            raise Finding(f"status byte {st} for request type {rtype}")
        if not full_hdr or st != S_OK:
            continue
        if rtype in (T_IN, T_OUT) and (nbytes % 512 or sector + nbytes // 512 > dev.capacity):
            raise Finding(f"type {rtype} of {nbytes} bytes at sector {sector} completed OK "
                          f"on a {dev.capacity}-sector drive")
        if rtype == T_OUT and dev.read_only:
            raise Finding("a read-only drive completed a write with OK")
        # (a write in the same batch, or a replayed one, may have changed the file since)
        if rtype == T_IN and data is not None and not (rig.queues[0].tainted or rig.may_write):
            got = b"".join(bytes(view[a:a + n]) for a, n in data)
            want = os.pread(dev._fd, nbytes, sector * 512)
            if got != want:
                raise Finding(f"read of sector {sector} ({nbytes} bytes) does not match the file")


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    rig = inp.pick(RIGS)
    dev = rig.device
    lim = devices.limiter(inp)
    if lim is not None:
        lim.loop = rig.dloop
    dev._set_limiter(lim)
    rig.meta, rig.may_write = {}, False
    if not rig.start(inp, keep=0, drop=0):
        return
    q = rig.queues[0]
    for _ in range(inp.int_in(1, 24)):
        op = inp.u8()
        if op < 150:
            request(inp, rig)
        elif op < 165:
            q.add_raw(inp)
            rig.may_write = True
        elif op < 170:
            q.hostile_index(inp)
            rig.may_write = True
        elif op < 235:
            rig.kick(0)
        elif op < 245 and lim is not None:
            lim.refill(ops=inp.int_in(0, 8), nbytes=inp.int_in(0, 1 << 14))
        else:
            rig.loop.run_once()
        rig.check()
        check_completed(rig, q.reap(), dev)
    rig.kick(0)
    rig.loop.settle(rig.t.name)
    rig.check()
    check_completed(rig, q.reap(), dev)


if __name__ == "__main__":
    common.main(test_one_input)
