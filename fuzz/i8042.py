"""The i8042 controller: a stream of reads and writes on ports 0x60/0x64 (any offset,
any size, every command with and without its data byte) and host Ctrl-Alt-Del presses.

Properties: no exception; reads return 0..255 (all-ones for bad sizes); the keyboard
queue never exceeds its size; a reset request reaches the VM at most once per controller
(Linux writes 0xFE up to 10 times); Ctrl-Alt-Del is refused only for lack of room.
"""

from __future__ import annotations

from fuzz import common

with common.instrumented():
    from fuzz.harness import Finding, Input
    from nodesvc_i8042.i8042 import CTRL_ALT_DEL, I8042, KBD_QUEUE_SIZE

COMMANDS = (0x20, 0x60, 0xA7, 0xA8, 0xA9, 0xAA, 0xAB, 0xAD, 0xAE, 0xCA, 0xCB, 0xD0, 0xD1,
            0xD2, 0xD3, 0xD4, 0xFE)
KBD = (0xFF, 0xF2, 0xEE, 0xF4, 0xED)


class Irq:
    def trigger(self):
        pass


def test_one_input(data: bytes) -> None:
    inp = Input(data)
    resets = []
    dev = I8042(Irq(), lambda: resets.append(1))
    for _ in range(inp.int_in(0, 64)):
        op = inp.u8()
        port = dev.command_port if inp.flag() else dev.data_port
        off = 0 if inp.u8() < 245 else inp.int_in(1, 7)
        size = 1 if inp.u8() < 245 else inp.pick((2, 4, 8))
        if op < 110:
            if port is dev.command_port:
                value = inp.pick(COMMANDS) if inp.u8() < 200 else inp.u8()
            else:
                value = inp.pick(KBD) if inp.u8() < 120 else inp.u8()
            port.write(off, size, value if inp.u8() < 250 else inp.u64())
        elif op < 230:
            v = port.read(off, size)
            if not isinstance(v, int) or not 0 <= v < 1 << (8 * size):
                raise Finding(f"read({off}, {size}) returned {v!r}")
        else:
            room = KBD_QUEUE_SIZE - len(dev._kbd)
            if dev.send_ctrl_alt_del() != (room >= len(CTRL_ALT_DEL)):
                raise Finding(f"Ctrl-Alt-Del answered wrongly with {room} bytes of room")
        if len(dev._kbd) > KBD_QUEUE_SIZE:
            raise Finding(f"keyboard queue holds {len(dev._kbd)} bytes")
        if len(resets) > 1:
            raise Finding("reset requested twice")


if __name__ == "__main__":
    common.main(test_one_input)
