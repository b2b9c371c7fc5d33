"""16550A UART register model (pure Python, no KVM), sized for Linux's 8250 driver.

What Linux checks and how this model answers (8250_port.c):
  * autoconfig: IER keeps its low 4 bits (0x00/0x0F probe), loopback MCR=LOOP|OUT2|RTS
    reads back MSR=DCD|CTS, FCR.0 makes IIR bits 6-7 read 0b11 -> 16550A; EFR/16750/UUE
    probes all fail, so no exotic variant is picked. With the variant probes built in,
    size_fifo() counts our 64-byte RX FIFO and names the port "U6_16550A" (64-byte
    tx_loadsz: fewer THRE interrupts, same driver otherwise).
  * startup THRE test: enabling IER.ETBEI with an empty THR makes IIR report THRE again,
    even after an IIR read cleared it (otherwise Linux falls back to a polling timer).
Transmission is instantaneous, so LSR.THRE/TEMT are always set and every THR write
re-arms the THRE interrupt. There is no character-timeout interrupt: RX data pending
(any amount, whatever the FIFO trigger level) reports IIR=0x4, so single keystrokes
interrupt promptly.

Interrupts are edges (ISA IRQ on the in-kernel PIC/IOAPIC). Linux's ISR loops until
IIR says "no interrupt", so raising an edge whenever the OR of enabled conditions goes
0 -> 1 is enough; we additionally raise one on every RX arrival and every fresh THRE,
which costs at most a spurious IRQ and never loses one. Like QEMU and Firecracker (and
unlike a PC's wiring) MCR.OUT2 does not gate the interrupt: guests tested there rely on it.
"""

from __future__ import annotations

import threading
from collections import deque

# Register offsets.
RBR_THR_DLL, IER_DLM, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)

IER_ERBFI, IER_ETBEI, IER_ELSI, IER_EDSSI = 0x01, 0x02, 0x04, 0x08

IIR_NO_INT, IIR_MSI, IIR_THRI, IIR_RDI, IIR_RLSI = 0x01, 0x00, 0x02, 0x04, 0x06
IIR_FIFO_ENABLED = 0xC0

FCR_ENABLE, FCR_CLEAR_RX = 0x01, 0x02

LCR_DLAB = 0x80

MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10

LSR_DR, LSR_OE, LSR_THRE, LSR_TEMT = 0x01, 0x02, 0x20, 0x40

MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80
# Outside loopback the "modem" is always there, so getty never waits for carrier.
MSR_IDLE = MSR_DCD | MSR_DSR | MSR_CTS

RX_FIFO_SIZE = 64

_BYTE = [bytes((i,)) for i in range(256)]  # avoid an allocation per THR write


def _loop_msr(mcr: int) -> int:
    """Loopback wiring: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD."""
    return (((mcr & MCR_RTS) and MSR_CTS) | ((mcr & MCR_DTR) and MSR_DSR)
            | ((mcr & MCR_OUT1) and MSR_RI) | ((mcr & MCR_OUT2) and MSR_DCD))


class Uart16550:
    """A BusDevice covering the 8 UART registers; also the VM's console device."""

    def __init__(self, irq, console_out, *, rx_fifo_size: int = RX_FIFO_SIZE):
        self._irq = irq
        self._out = console_out
        self._lock = threading.Lock()
        self._rx: deque[int] = deque()
        self._rx_size = rx_fifo_size
        self._ier = 0
        self._fcr = 0
        self._lcr = 0
        self._mcr = 0
        self._lsr_err = 0          # sticky LSR error bits (OE), cleared by reading LSR
        self._msr_delta = 0        # MSR bits 0-3, cleared by reading MSR
        self._scr = 0
        self._dll, self._dlm = 0x0C, 0x00   # 9600 baud until the driver programs it
        self._thr_pending = False  # THRE interrupt armed and not yet acknowledged
        self._last_rx = 0
        self.tx_bytes = 0
        self.rx_bytes = 0
        self.rx_dropped = 0        # console input refused: FIFO full or in loopback
        self.overruns = 0          # loopback writes that found the FIFO full
        self.bad_accesses = 0      # non-byte accesses (Linux never makes them)

    # --- bus side (vCPU threads) -------------------------------------------------

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        with self._lock:
            if offset == RBR_THR_DLL and not self._lcr & LCR_DLAB and size == 1:
                # Hot path: the console. Transmit now, re-arm THRE.
                if self._mcr & MCR_LOOP:
                    fire = self._loopback_tx(value)
                else:
                    self._out.write(_BYTE[value])
                    self.tx_bytes += 1
                    fire = False
                if self._ier & IER_ETBEI and not self._thr_pending:
                    self._thr_pending = fire = True
            elif size != 1:
                self.bad_accesses += 1
                return
            else:
                before = self._level()
                self._write_reg(offset, value)
                fire = self._level() and not before
        if fire:
            self._irq.trigger()

    def read(self, offset: int, size: int) -> int:
        if size != 1:
            self.bad_accesses += 1
            return (1 << (8 * size)) - 1
        with self._lock:
            return self._read_reg(offset)

    # --- console side (event-loop thread) ----------------------------------------

    def console_input(self, data: bytes) -> int:
        """Queue host keystrokes for the guest; returns how many bytes were accepted.

        Never blocks: bytes that do not fit the RX FIFO are dropped, counted and
        flagged to the guest as an overrun (LSR.OE), as a real UART would.
        """
        if not data:
            return 0
        with self._lock:
            if self._mcr & MCR_LOOP:   # the serial input pin is disconnected in loopback
                self.rx_dropped += len(data)
                return 0
            before = self._level()
            room = self._rx_size - len(self._rx)
            taken = data[:room] if room < len(data) else data
            self._rx.extend(taken)
            self.rx_bytes += len(taken)
            if len(taken) < len(data):
                self.rx_dropped += len(data) - len(taken)
                self._lsr_err |= LSR_OE
            fire = (bool(taken) and bool(self._ier & IER_ERBFI)) or (self._level() and not before)
        if fire:
            self._irq.trigger()
        return len(taken)

    # --- snapshots ----------------------------------------------------------------------

    _STATE = ("_ier", "_fcr", "_lcr", "_mcr", "_lsr_err", "_msr_delta", "_scr", "_dll", "_dlm",
              "_thr_pending", "_last_rx", "tx_bytes", "rx_bytes", "rx_dropped", "overruns")

    def save_state(self) -> dict:
        """Registers and buffered input (Firecracker saves the same for its 8250)."""
        with self._lock:
            state = {k.lstrip("_"): getattr(self, k) for k in self._STATE}
            state["rx"] = list(self._rx)
        return state

    def restore_state(self, state: dict) -> None:
        with self._lock:
            for k in self._STATE:
                setattr(self, k, type(getattr(self, k))(state[k.lstrip("_")]))
            self._rx = deque(int(b) & 0xFF for b in state["rx"][:self._rx_size])

    # --- internals (lock held) -----------------------------------------------------

    def _loopback_tx(self, value: int) -> bool:
        if len(self._rx) < self._rx_size:
            self._rx.append(value)
            return bool(self._ier & IER_ERBFI)
        self._lsr_err |= LSR_OE
        self.overruns += 1
        return bool(self._ier & IER_ELSI)

    def _level(self) -> bool:
        """Whether any enabled interrupt condition is pending (the INTR pin)."""
        ier = self._ier
        return bool((ier & IER_ELSI and self._lsr_err) or (ier & IER_ERBFI and self._rx)
                    or (ier & IER_ETBEI and self._thr_pending)
                    or (ier & IER_EDSSI and self._msr_delta))

    def _iir(self) -> int:
        ier = self._ier
        if ier & IER_ELSI and self._lsr_err:
            iid = IIR_RLSI
        elif ier & IER_ERBFI and self._rx:
            iid = IIR_RDI
        elif ier & IER_ETBEI and self._thr_pending:
            iid = IIR_THRI
        elif ier & IER_EDSSI and self._msr_delta:
            iid = IIR_MSI
        else:
            iid = IIR_NO_INT
        return iid | (IIR_FIFO_ENABLED if self._fcr & FCR_ENABLE else 0)

    def _msr_status(self) -> int:
        return _loop_msr(self._mcr) if self._mcr & MCR_LOOP else MSR_IDLE

    def _write_reg(self, offset: int, value: int) -> None:
        dlab = self._lcr & LCR_DLAB
        if offset == RBR_THR_DLL:          # only reached with DLAB set
            self._dll = value
        elif offset == IER_DLM:
            if dlab:
                self._dlm = value
                return
            old, self._ier = self._ier, value & 0x0F
            if self._ier & IER_ETBEI and not old & IER_ETBEI:
                self._thr_pending = True   # THR is always empty: enabling ETBEI fires
            elif not self._ier & IER_ETBEI:
                self._thr_pending = False
        elif offset == IIR_FCR:
            if (value ^ self._fcr) & FCR_ENABLE or value & FCR_CLEAR_RX:
                self._rx.clear()           # toggling FCR.0 also resets both FIFOs
            self._fcr = value & 0xC9       # enable, DMA mode, trigger level
        elif offset == LCR:
            self._lcr = value
        elif offset == MCR:
            old_msr = self._msr_status()
            self._mcr = value & 0x1F
            self._note_msr_change(old_msr, self._msr_status())
        elif offset == SCR:
            self._scr = value
        # LSR and MSR are read-only (factory test registers on real parts).

    def _note_msr_change(self, old: int, new: int) -> None:
        changed = old ^ new
        delta = 0
        if changed & MSR_CTS:
            delta |= MSR_DCTS
        if changed & MSR_DSR:
            delta |= MSR_DDSR
        if old & MSR_RI and not new & MSR_RI:
            delta |= MSR_TERI             # trailing edge of RI only
        if changed & MSR_DCD:
            delta |= MSR_DDCD
        self._msr_delta |= delta

    def _read_reg(self, offset: int) -> int:
        dlab = self._lcr & LCR_DLAB
        if offset == RBR_THR_DLL:
            if dlab:
                return self._dll
            if self._rx:
                self._last_rx = self._rx.popleft()
            return self._last_rx           # an empty RBR re-reads the last byte
        if offset == IER_DLM:
            return self._dlm if dlab else self._ier
        if offset == IIR_FCR:
            iir = self._iir()
            if iir & 0x0F == IIR_THRI:
                self._thr_pending = False  # reading IIR acknowledges THRE
            return iir
        if offset == LCR:
            return self._lcr
        if offset == MCR:
            return self._mcr
        if offset == LSR:
            lsr = LSR_THRE | LSR_TEMT | self._lsr_err | (LSR_DR if self._rx else 0)
            self._lsr_err = 0
            return lsr
        if offset == MSR:
            msr = self._msr_status() | self._msr_delta
            self._msr_delta = 0
            return msr
        if offset == SCR:
            return self._scr
        return 0xFF
