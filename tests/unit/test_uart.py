"""16550A UART model, driven through a real PIO Bus the way Linux's 8250 driver probes it."""

from __future__ import annotations

import threading

import pytest


from nodesvc.plugins import PluginManager  # noqa: E402
from nodesvc.vmm.errors import ConfigError  # noqa: E402
from nodesvc.vmm.bus import Bus, BusConflict  # noqa: E402
from nodesvc.vmm.device import DeviceContext  # noqa: E402
from nodesvc_serial import plugin  # noqa: E402
from nodesvc_serial.uart import RX_FIFO_SIZE  # noqa: E402

BASE = 0x3F8
RX = TX = 0; IER = 1; IIR = FCR = 2; LCR = 3; MCR = 4; LSR = 5; MSR = 6; SCR = 7  # noqa: E702


class FakeIrq:
    def __init__(self, gsi):
        self.gsi, self.count = gsi, 0

    def trigger(self):
        self.count += 1


class FakeSink:
    def __init__(self):
        self.data = bytearray()

    def write(self, data):
        self.data += data


def make_ctx():
    irqs = {}
    ctx = DeviceContext(
        vm_id="t", memory=None, pio_bus=Bus("pio"), mmio_bus=Bus("mmio"), event_loop=None,
        irq_line=lambda gsi: irqs.setdefault(gsi, FakeIrq(gsi)), console_out=FakeSink(),
        request_exit=lambda exit_: None)
    return ctx, irqs


@pytest.fixture
def env():
    ctx, irqs = make_ctx()
    uart = plugin.attach(ctx, {})
    bus = ctx.pio_bus

    class Env:
        pass
    e = Env()
    e.uart, e.irq, e.sink, e.bus = uart, irqs[4], ctx.console_out, bus
    e.inb = lambda off: bus.read(BASE + off, 1)
    e.outb = lambda off, val: bus.write(BASE + off, 1, val)
    return e


# --- autoconfig (8250_port.c) ----------------------------------------------------------

def size_fifo(e):
    old_lcr = e.inb(LCR)
    e.outb(LCR, 0)
    old_fcr = e.inb(FCR)          # Linux really reads "FCR" (i.e. IIR) here
    old_mcr = e.inb(MCR)
    e.outb(FCR, 0x07)
    e.outb(MCR, 0x10)
    e.outb(LCR, 0x80)
    old_dl = e.inb(0) | e.inb(1) << 8
    e.outb(0, 1); e.outb(1, 0)  # noqa: E702
    e.outb(LCR, 0x03)
    for c in range(256):
        e.outb(TX, c)
    count = 0
    while e.inb(LSR) & 0x01 and count < 256:
        e.inb(RX)
        count += 1
    e.outb(FCR, old_fcr)
    e.outb(MCR, old_mcr)
    e.outb(LCR, 0x80)
    e.outb(0, old_dl & 0xFF); e.outb(1, old_dl >> 8)  # noqa: E702
    e.outb(LCR, old_lcr)
    return count


def autoconfig(e) -> str:
    """Python transcription of Linux's autoconfig()/autoconfig_16550a() decisions."""
    scratch = e.inb(IER)
    e.outb(IER, 0)
    scratch2 = e.inb(IER) & 0x0F
    e.outb(IER, 0x0F)
    scratch3 = e.inb(IER) & 0x0F
    e.outb(IER, scratch)
    if scratch2 != 0 or scratch3 != 0x0F:
        return "none (IER test)"
    save_mcr, save_lcr = e.inb(MCR), e.inb(LCR)
    e.outb(MCR, 0x10 | 0x08 | 0x02)            # LOOP | OUT2 | RTS
    status1 = e.inb(MSR) & 0xF0
    e.outb(MCR, save_mcr)
    if status1 != 0x90:                        # DCD | CTS
        return "none (loop test)"
    e.outb(LCR, 0xBF); e.outb(2, 0); e.outb(LCR, 0)  # noqa: E702  (clear EFR, if any)
    e.outb(FCR, 0x01)
    iir = e.inb(IIR) & 0xC0
    if iir != 0xC0:
        return {0x00: "8250/16450", 0x80: "16550"}.get(iir, "unknown")
    # autoconfig_16550a(), CONFIG_SERIAL_8250_16550A_VARIANTS=y
    kind = "16550A"
    e.outb(LCR, 0x80)
    if e.inb(2) == 0:
        return "16650 (EFRv1)"
    e.outb(LCR, 0xBF)
    if e.inb(2) == 0:
        return "has EFR"
    e.outb(LCR, 0)
    mcr = e.inb(MCR)
    e.outb(LCR, 0xE0)
    status2 = e.inb(2)
    if not (status2 ^ mcr) & 0x10:
        e.outb(LCR, 0); e.outb(MCR, mcr ^ 0x10); e.outb(LCR, 0xE0)  # noqa: E702
        status2 = e.inb(2)
        e.outb(LCR, 0); e.outb(MCR, mcr)  # noqa: E702
        if (status2 ^ mcr) & 0x10:
            return "NS16550A"
    e.outb(LCR, 0)
    e.outb(FCR, 0x21)
    s1 = e.inb(IIR) & 0xE0
    e.outb(FCR, 0x01)
    e.outb(LCR, 0x80)
    e.outb(FCR, 0x21)
    s2 = e.inb(IIR) & 0xE0
    e.outb(FCR, 0x01)
    e.outb(LCR, 0)
    if s1 == 0xC0 and s2 == 0xE0:
        return "16750"
    ier = e.inb(IER)
    e.outb(IER, ier & ~0x40)
    if not e.inb(IER) & 0x40:
        e.outb(IER, ier | 0x40)
        if e.inb(IER) & 0x40:
            return "XScale"
    e.outb(IER, ier)
    if size_fifo(e) == 64:
        kind = "U6_16550A"
    e.outb(LCR, save_lcr)
    e.outb(MCR, save_mcr)
    e.outb(FCR, 0x07); e.outb(FCR, 0)  # noqa: E702  serial8250_clear_fifos
    e.inb(RX)
    e.outb(IER, 0)
    return kind


def test_autoconfig_detects_16550a_family(env):
    kind = autoconfig(env)
    assert kind == "U6_16550A"        # 16550A with a 64-byte FIFO (see uart.py docstring)
    assert env.sink.data == b""       # loopback bytes never reach the console
    # Only the IER=0x0F existence probe raises an edge (THRE). A PC gates INTR with
    # MCR.OUT2; like QEMU and Firecracker we don't, and IRQ 4 is still masked then.
    assert env.irq.count == 1
    assert env.inb(IIR) & 0x0F == 0x01 and env.inb(IER) == 0
    assert env.uart.rx_dropped == 0 and env.uart.overruns == 256 - RX_FIFO_SIZE


def test_ier_keeps_low_nibble_only(env):
    env.outb(IER, 0xFF)
    assert env.inb(IER) == 0x0F


def test_scratch_register(env):
    for v in (0xA5, 0x5A, 0x00):
        env.outb(SCR, v)
        assert env.inb(SCR) == v


def test_lcr_reads_back_and_dlab_divisor_latch(env):
    env.outb(IER, 0x05)
    env.outb(LCR, 0x83)                     # DLAB | 8N1
    assert env.inb(LCR) == 0x83
    env.outb(0, 0x01); env.outb(1, 0x00)  # noqa: E702  115200 baud
    assert (env.inb(0), env.inb(1)) == (0x01, 0x00)
    env.outb(LCR, 0x03)
    assert env.inb(IER) == 0x05             # IER untouched by the DLM write
    env.outb(TX, ord("x"))                  # offset 0 is THR again
    assert env.sink.data == b"x"
    env.outb(LCR, 0x80)
    assert env.inb(0) == 0x01


def test_fifo_bits_in_iir(env):
    assert env.inb(IIR) == 0x01
    env.outb(FCR, 0x01)
    assert env.inb(IIR) == 0xC1
    env.outb(FCR, 0x00)
    assert env.inb(IIR) == 0x01


def test_loopback_mirrors_mcr_into_msr(env):
    assert env.inb(MSR) & 0xF0 == 0xB0      # DCD|DSR|CTS outside loopback
    env.outb(MCR, 0x10)                     # loop, all outputs low
    assert env.inb(MSR) == 0x0B             # DCD/DSR/CTS dropped -> DDCD|DDSR|DCTS
    env.outb(MCR, 0x10 | 0x01)
    assert env.inb(MSR) == 0x20 | 0x02      # DTR -> DSR (+DDSR)
    env.outb(MCR, 0x10 | 0x02)
    assert env.inb(MSR) == 0x10 | 0x03      # RTS -> CTS
    env.outb(MCR, 0x10 | 0x04)
    assert env.inb(MSR) == 0x40 | 0x01      # OUT1 -> RI
    env.outb(MCR, 0x10 | 0x08)
    assert env.inb(MSR) == 0x80 | 0x0C      # OUT2 -> DCD, RI trailing edge -> TERI


def test_loopback_tx_goes_to_rx(env):
    env.outb(MCR, 0x10)
    env.outb(TX, 0x42)
    assert env.sink.data == b"" and env.uart.tx_bytes == 0
    assert env.inb(LSR) & 0x01
    assert env.inb(RX) == 0x42
    assert not env.inb(LSR) & 0x01
    assert env.uart.console_input(b"zz") == 0 and env.uart.rx_dropped == 2   # SIN cut off


def test_thre_interrupt_on_ier_write_linux_startup_test(env):
    env.outb(FCR, 0x01)
    # serial8250_do_startup(): the UART_BUG_THRE test.
    env.outb(IER, 0x02)
    assert env.irq.count == 1
    iir1 = env.inb(IIR)
    env.outb(IER, 0)
    env.outb(IER, 0x02)
    iir = env.inb(IIR)
    env.outb(IER, 0)
    assert iir1 == 0xC2 and iir == 0xC2     # re-asserted: no UART_BUG_THRE
    assert env.irq.count == 2
    # The UART_BUG_TXEN test: LSR.TEMT with IIR showing THRE.
    env.outb(IER, 0x02)
    lsr, iir = env.inb(LSR), env.inb(IIR)
    env.outb(IER, 0)
    assert lsr & 0x60 == 0x60 and not iir & 0x01


def test_thr_write_outputs_and_rearms_thre(env):
    env.outb(TX, ord("a"))
    assert env.irq.count == 0               # ETBEI off: no interrupts
    env.outb(IER, 0x02)
    assert env.irq.count == 1
    assert env.inb(IIR) == 0x02             # acknowledged by the read
    assert env.inb(IIR) == 0x01
    for ch in b"bcd":                       # one burst from the ISR's tx_chars()
        env.outb(TX, ch)
    assert env.irq.count == 2               # re-armed once, not per byte
    assert env.inb(IIR) == 0x02
    env.outb(TX, ord("e"))
    assert env.irq.count == 3
    assert env.sink.data == b"abcde" and env.uart.tx_bytes == 5
    assert env.inb(LSR) == 0x60             # THRE | TEMT always


def test_rx_interrupt_and_data(env):
    env.outb(IER, 0x01)
    assert env.irq.count == 0
    assert env.uart.console_input(b"hi") == 2
    assert env.irq.count == 1
    assert env.inb(IIR) == 0x04
    assert env.inb(LSR) & 0x01
    assert env.inb(RX) == ord("h")
    assert env.inb(IIR) == 0x04             # still data
    assert env.inb(RX) == ord("i")
    assert env.inb(IIR) == 0x01 and not env.inb(LSR) & 0x01
    env.uart.console_input(b"j")
    assert env.irq.count == 2               # each arrival raises an edge


def test_enabling_rx_interrupt_with_data_waiting_fires(env):
    env.uart.console_input(b"early")
    assert env.irq.count == 0
    env.outb(IER, 0x01)
    assert env.irq.count == 1
    assert env.inb(IIR) == 0x04


def test_rx_has_priority_over_thre(env):
    env.outb(IER, 0x03)
    env.uart.console_input(b"k")
    assert env.inb(IIR) == 0x04             # RX first; THRE stays pending
    env.inb(RX)
    assert env.inb(IIR) == 0x02
    assert env.inb(IIR) == 0x01


def test_rx_fifo_overflow_counts_and_sets_oe(env):
    env.outb(IER, 0x05)                     # RX + line status
    assert env.uart.console_input(bytes(range(100))) == RX_FIFO_SIZE
    assert env.uart.rx_dropped == 100 - RX_FIFO_SIZE
    assert env.inb(IIR) == 0x06             # overrun reported first
    assert env.inb(LSR) == 0x60 | 0x02 | 0x01
    assert env.inb(LSR) == 0x60 | 0x01      # OE clears on read
    got = []
    while env.inb(LSR) & 0x01:
        got.append(env.inb(RX))
    assert got == list(range(RX_FIFO_SIZE))


def test_fcr_clear_rx(env):
    env.uart.console_input(b"abc")
    env.outb(FCR, 0x01 | 0x02)
    assert not env.inb(LSR) & 0x01


def test_linux_isr_never_misses_input():
    """Interleave host input with a Linux-like ISR that runs once per edge."""
    ctx, irqs = make_ctx()
    uart = plugin.attach(ctx, {})
    irq = irqs[4]
    uart.write(IER, 1, 0x01)
    got, handled = bytearray(), 0
    for chunk in (b"a", b"bc", b"", b"defg", b"h"):
        uart.console_input(chunk)
        while handled < irq.count:          # deliver each latched edge
            handled += 1
            while not uart.read(IIR, 1) & 0x01:
                while uart.read(LSR, 1) & 0x01:
                    got.append(uart.read(RX, 1))
    assert bytes(got) == b"abcdefgh"


def test_console_input_from_another_thread(env):
    env.outb(IER, 0x01)
    payload = bytes(i % 251 for i in range(20000))
    done = threading.Event()

    def producer():
        i = 0
        while i < len(payload):
            i += env.uart.console_input(payload[i:i + 37])
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    got = bytearray()
    while len(got) < len(payload):
        if env.inb(LSR) & 0x01:
            got.append(env.inb(RX))
    t.join()
    assert bytes(got) == payload


def test_non_byte_access_is_ignored(env):
    env.bus.write(BASE, 2, 0x4142)
    assert env.sink.data == b"" and env.uart.bad_accesses == 1
    assert env.bus.read(BASE + LSR, 4) == 0xFFFFFFFF


def test_attach_config_overrides():
    ctx, irqs = make_ctx()
    uart = plugin.attach(ctx, {"port": "0x2f8", "irq": 3})
    assert ctx.pio_bus.find(0x2F8) == (uart, 0) and ctx.pio_bus.find(0x2FF) == (uart, 7)
    assert ctx.pio_bus.find(0x300) is None
    assert list(irqs) == [3]
    with pytest.raises(BusConflict):
        plugin.attach(ctx, {"port": 0x2FC})


def test_plugin_loads_through_entry_points():
    pm = PluginManager(blocked=[])
    reg = pm.device_registry()
    assert "serial" in reg and "i8042" in reg
    assert reg.get("serial") is plugin.Serial
    names = {p.name: p.distribution for p in pm.plugins()}
    assert names["serial"] == "nodesvc-serial"
    with pytest.raises(ConfigError, match="cannot be blocked"):   # essential plugins
        PluginManager(blocked=["serial"])
