"""The 16550A UART: a stream of port reads and writes (any offset, any size, DLAB and
loopback on and off, FIFO control) mixed with host console input.

Properties: no exception; byte reads return 0..255 and wider ones all-ones; the RX FIFO
never holds more than its size; every THR write outside loopback reaches the console
output (tx_bytes counts them); console input is accepted only up to the FIFO's room.
"""

from __future__ import annotations

import io

from fuzz import common

with common.instrumented():
    from fuzz.harness import Finding, Input
    from nodesvc_serial.uart import LCR, LCR_DLAB, MCR, MCR_LOOP, RX_FIFO_SIZE, Uart16550


class Irq:
    def __init__(self):
        self.count = 0

    def trigger(self):
        self.count += 1


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    out = io.BytesIO()
    u = Uart16550(Irq(), out)
    for _ in range(inp.int_in(0, 64)):
        op = inp.u8()
        off = inp.int_in(0, 7) if inp.u8() < 245 else inp.int_in(0, 255)
        size = 1 if inp.u8() < 240 else inp.pick((2, 4, 8))
        if op < 120:
            value = inp.u8() if inp.u8() < 250 else inp.u64()
            before = u.tx_bytes
            thr = (off == 0 and size == 1 and not u._lcr & LCR_DLAB and not u._mcr & MCR_LOOP)
            u.write(off, size, value)
            if thr and u.tx_bytes != before + 1:
                raise Finding("a THR write did not reach the console")
        elif op < 220:
            v = u.read(off, size)
            if not isinstance(v, int) or not 0 <= v < 1 << (8 * size):
                raise Finding(f"read({off}, {size}) returned {v!r}")
        else:
            chunk = inp.blob(100)
            room = RX_FIFO_SIZE - len(u._rx)
            took = u.console_input(chunk)
            if took > len(chunk) or (not u._mcr & MCR_LOOP and took != min(room, len(chunk))):
                raise Finding(f"console_input took {took} of {len(chunk)} with {room} room")
        if len(u._rx) > RX_FIFO_SIZE:
            raise Finding(f"RX FIFO holds {len(u._rx)} bytes")
    if out.getbuffer().nbytes != u.tx_bytes:
        raise Finding(f"console got {out.getbuffer().nbytes} bytes, tx_bytes={u.tx_bytes}")
    u.restore_state(u.save_state())           # what it holds survives a snapshot


assert LCR == 3 and MCR == 4

if __name__ == "__main__":
    common.main(test_one_input)
