"""i8042 keyboard controller model (pure Python, no KVM): enough for Linux to probe it,
for the guest to reset the VM (0xFE), and for the host to send Ctrl-Alt-Del.

Linux (drivers/input/serio/i8042.c, with i8042.noaux i8042.nomux i8042.dumbkbd) flushes
the output buffer while status.OBF is set, reads the CTR twice (0x20) until stable, warns
unless status bit 4 (keyboard not inhibited) is set, writes the CTR back (0x60), and takes
the CTR's XLATE bit as "the firmware enabled translation". Keyboard bytes then arrive one
per IRQ 1: the ISR reads status, then one byte from port 0x60.

Scan codes: the keyboard itself speaks set 2; the controller translates to set 1 only if
CTR.XLATE (bit 6) is set. Our default CTR is 0x05 (KBDINT|SYS, no XLATE), like
Firecracker's, so Linux's atkbd runs untranslated set 2 (dumbkbd keeps it from switching
sets) and Ctrl-Alt-Del is 0x14, 0x11, 0xE0 0x71. If a guest turns XLATE on, the same keys
are delivered as set 1: 0x1D, 0x38, 0xE0 0x53.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable

# Status register (read from port 0x64).
STS_OBF, STS_IBF, STS_SYS, STS_CMD, STS_UNLOCKED = 0x01, 0x02, 0x04, 0x08, 0x10
# Controller configuration byte ("CTR" in Linux, "command byte" in IBM docs).
CTR_KBDINT, CTR_AUXINT, CTR_SYS = 0x01, 0x02, 0x04
CTR_KBDDIS, CTR_AUXDIS, CTR_XLATE = 0x10, 0x20, 0x40
DEFAULT_CTR = CTR_KBDINT | CTR_SYS

# Controller commands (written to port 0x64).
CMD_READ_CTR, CMD_WRITE_CTR = 0x20, 0x60
CMD_AUX_DISABLE, CMD_AUX_ENABLE, CMD_AUX_TEST = 0xA7, 0xA8, 0xA9
CMD_SELF_TEST, CMD_KBD_TEST = 0xAA, 0xAB
CMD_KBD_DISABLE, CMD_KBD_ENABLE = 0xAD, 0xAE
CMD_READ_MODE, CMD_WRITE_MODE = 0xCA, 0xCB
CMD_READ_OUTP, CMD_WRITE_OUTP = 0xD0, 0xD1
CMD_KBD_LOOP, CMD_AUX_LOOP, CMD_AUX_SEND = 0xD2, 0xD3, 0xD4
CMD_RESET_CPU = 0xFE
_WITH_PARAM = {CMD_WRITE_CTR, CMD_WRITE_MODE, CMD_WRITE_OUTP,
               CMD_KBD_LOOP, CMD_AUX_LOOP, CMD_AUX_SEND}

# Keyboard replies.
KBD_ACK, KBD_BAT_OK, KBD_ECHO = 0xFA, 0xAA, 0xEE

# Set-2 make codes and their set-1 translation (only the keys we ever send).
KEY_CTRL, KEY_ALT, KEY_EXT, KEY_DEL = 0x14, 0x11, 0xE0, 0x71
_SET2_TO_SET1 = {KEY_CTRL: 0x1D, KEY_ALT: 0x38, KEY_EXT: 0xE0, KEY_DEL: 0x53}
CTRL_ALT_DEL = (KEY_CTRL, KEY_ALT, KEY_EXT, KEY_DEL)

KBD_QUEUE_SIZE = 16   # bytes the (virtual) keyboard holds until the controller takes them

# Side effects a port handler asks for; applied after the lock is released.
# (Handlers may return a bool for NONE/IRQ: False == NONE, True == IRQ.)
NONE, IRQ, RESET = 0, 1, 2


class I8042:
    """Register model. `data_port` (0x60) and `command_port` (0x64) are its BusDevices."""

    def __init__(self, irq, on_reset: Callable[[], None]):
        self._irq = irq
        self._on_reset = on_reset
        self._lock = threading.Lock()
        self._ctr = DEFAULT_CTR
        self._outp = 0x03          # output port: bit 0 = not in reset, bit 1 = A20 on
        self._mode = 0x01          # AMI "controller mode" (0xCA/0xCB): PS/2 interface
        self._obf: int | None = None   # the one-byte output buffer
        self._obf_kbd = False      # whether that byte came from the keyboard (IRQ-worthy)
        self._last = 0
        self._kbd: deque[int] = deque()
        self._param_for: int | None = None   # command waiting for its data byte
        self._cmd_flag = STS_CMD   # status bit 3: last write went to port 0x64
        self._reset_requested = False
        self.resets = 0
        self.unknown_commands = 0
        self.bad_accesses = 0
        self.kbd_dropped = 0       # keyboard bytes a reply displaced from a full queue
        self.data_port = _Port(self._read_data, self._write_data, self)
        self.command_port = _Port(self._read_status, self._write_command, self)

    # --- host side -----------------------------------------------------------------

    def send_ctrl_alt_del(self) -> bool:
        """Press Ctrl, Alt and Del (make codes only, as Firecracker does).

        Returns False, sending nothing, if the keyboard queue has no room for all four
        bytes. Each byte is announced with its own IRQ 1 edge as it reaches port 0x60.
        """
        with self._lock:
            if KBD_QUEUE_SIZE - len(self._kbd) < len(CTRL_ALT_DEL):
                return False
            xlate = self._ctr & CTR_XLATE
            self._kbd.extend(_SET2_TO_SET1[c] if xlate else c for c in CTRL_ALT_DEL)
            fire = self._refill()
        if fire:
            self._irq.trigger()
        return True

    # --- port handlers (vCPU threads, lock held by _Port) ------------------------------

    def _read_status(self) -> tuple[int, int]:
        return ((STS_OBF if self._obf is not None else 0) | (self._ctr & CTR_SYS)
                | self._cmd_flag | STS_UNLOCKED), NONE

    def _read_data(self) -> tuple[int, int]:
        if self._obf is not None:
            self._last, self._obf = self._obf, None
        # Hand the next keyboard byte over right away, with a fresh IRQ 1 edge: Linux
        # reads one byte per interrupt, so every byte needs its own edge.
        return self._last, self._refill()

    def _write_data(self, value: int) -> int:
        self._cmd_flag = 0
        cmd, self._param_for = self._param_for, None
        if cmd is None:                        # a byte for the keyboard itself
            return self._kbd_command(value)
        if cmd == CMD_WRITE_CTR:
            return self._set_ctr(value)
        if cmd == CMD_WRITE_OUTP:
            self._outp = value
            if not value & 0x01:               # output port bit 0 drives CPU reset (low)
                return self._reset()
        elif cmd == CMD_WRITE_MODE:
            self._mode = value
        elif cmd == CMD_KBD_LOOP:              # echo as if the keyboard sent it
            self._respond(value, kbd=True)
            return IRQ if self._ctr & CTR_KBDINT else NONE
        # CMD_AUX_LOOP / CMD_AUX_SEND: there is no aux device; the byte vanishes.
        return NONE

    def _write_command(self, value: int) -> int:
        self._cmd_flag = STS_CMD
        self._param_for = None
        if value in _WITH_PARAM:
            self._param_for = value
        elif value == CMD_READ_CTR:
            self._respond(self._ctr)
        elif value == CMD_SELF_TEST:
            self._respond(0x55)
        elif value == CMD_KBD_TEST:
            self._respond(0x00)                # 0x00: clock and data lines fine
        elif value == CMD_AUX_TEST:
            self._respond(0x01)                # aux absent: "clock line stuck low"
        elif value == CMD_KBD_DISABLE:
            return self._set_ctr(self._ctr | CTR_KBDDIS)
        elif value == CMD_KBD_ENABLE:
            return self._set_ctr(self._ctr & ~CTR_KBDDIS)
        elif value == CMD_AUX_DISABLE:
            self._ctr |= CTR_AUXDIS
        elif value == CMD_AUX_ENABLE:
            self._ctr &= ~CTR_AUXDIS
        elif value == CMD_READ_MODE:
            self._respond(self._mode)
        elif value == CMD_READ_OUTP:
            self._respond(self._outp)
        elif value == CMD_RESET_CPU:
            return self._reset()
        else:
            self.unknown_commands += 1
        return NONE

    # --- internals (lock held) -------------------------------------------------------

    def _respond(self, byte: int, kbd: bool = False) -> None:
        # A controller reply must be the very next byte the guest reads (Linux polls for
        # it); a keyboard byte it displaces goes back to the keyboard, not to the floor —
        # unless the keyboard is full: a guest looping "echo this (0xD2), read CTR (0x20)"
        # would otherwise grow the queue without bound.
        if self._obf is not None and self._obf_kbd:
            if len(self._kbd) < KBD_QUEUE_SIZE:
                self._kbd.appendleft(self._obf)
            else:
                self.kbd_dropped += 1
        self._obf, self._obf_kbd = byte, kbd

    def _refill(self) -> bool:
        """Move the next keyboard byte into an empty output buffer; True = raise IRQ 1."""
        if self._obf is None and self._kbd and not self._ctr & CTR_KBDDIS:
            self._obf, self._obf_kbd = self._kbd.popleft(), True
            return bool(self._ctr & CTR_KBDINT)
        return False

    def _set_ctr(self, value: int) -> bool:
        old, self._ctr = self._ctr, value & 0xFF
        fire = self._refill()
        # Enabling KBDINT with a keyboard byte already waiting is a rising edge too.
        if (value & ~old & CTR_KBDINT) and self._obf is not None and self._obf_kbd:
            fire = True
        return fire

    def _kbd_command(self, value: int) -> bool:
        # A "dumb" keyboard: ACK everything, answer the few commands firmware might send.
        if value == 0xFF:
            reply = (KBD_ACK, KBD_BAT_OK)
        elif value == 0xF2:
            reply = (KBD_ACK, 0xAB, 0x83)      # identify: MF2 keyboard
        elif value == KBD_ECHO:
            reply = (KBD_ECHO,)
        else:
            reply = (KBD_ACK,)
        if len(self._kbd) + len(reply) <= KBD_QUEUE_SIZE:   # else the keyboard is jammed
            self._kbd.extend(reply)
        return self._refill()

    def _reset(self) -> int:
        self.resets += 1
        if not self._reset_requested:          # Linux writes 0xFE up to 10 times
            self._reset_requested = True
            return RESET
        return NONE


class _Port:
    """BusDevice for one byte-wide i8042 port; serialises access and fires side effects
    (IRQ edge, reset request) after releasing the lock."""

    def __init__(self, reader, writer, dev: I8042):
        self._reader, self._writer, self._dev = reader, writer, dev

    def read(self, offset: int, size: int) -> int:
        dev = self._dev
        if size != 1 or offset != 0:
            dev.bad_accesses += 1
            return (1 << (8 * size)) - 1
        with dev._lock:
            value, effect = self._reader()
        if effect:
            dev._irq.trigger()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        dev = self._dev
        if size != 1 or offset != 0:
            dev.bad_accesses += 1
            return
        with dev._lock:
            effect = self._writer(value & 0xFF)
        if effect == RESET:
            dev._on_reset()
        elif effect:
            dev._irq.trigger()
