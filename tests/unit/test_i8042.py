"""i8042 model, driven through a real PIO Bus the way Linux's i8042 driver probes it."""

from __future__ import annotations

import pytest


from nodesvc.plugins import PluginManager  # noqa: E402
from nodesvc.vmm.errors import ConfigError  # noqa: E402
from nodesvc.vmm.bus import Bus  # noqa: E402
from nodesvc.vmm.device import DeviceContext  # noqa: E402
from nodesvc.vmm.exits import ExitReason  # noqa: E402
from nodesvc_i8042 import plugin  # noqa: E402

DATA, CMD = 0x60, 0x64
OBF, SYS, UNLOCKED = 0x01, 0x04, 0x10
CTR_KBDINT, CTR_KBDDIS, CTR_AUXDIS, CTR_XLATE = 0x01, 0x10, 0x20, 0x40


class FakeIrq:
    def __init__(self, gsi):
        self.gsi, self.count = gsi, 0

    def trigger(self):
        self.count += 1


class Env:
    def __init__(self):
        self.irqs, self.exits = {}, []
        self.ctx = DeviceContext(
            vm_id="t", memory=None, pio_bus=Bus("pio"), mmio_bus=Bus("mmio"),
            event_loop=None, irq_line=lambda gsi: self.irqs.setdefault(gsi, FakeIrq(gsi)),
            console_out=None, request_exit=self.exits.append)
        self.dev = plugin.attach(self.ctx, {})
        self.irq = self.irqs[1]

    def inb(self, port):
        return self.ctx.pio_bus.read(port, 1)

    def outb(self, port, value):
        self.ctx.pio_bus.write(port, 1, value)

    def command(self, cmd, params=(), replies=0):
        """Linux's __i8042_command(): wait IBF clear, command, params, poll OBF, read."""
        assert not self.inb(CMD) & 0x02
        self.outb(CMD, cmd)
        for p in params:
            assert not self.inb(CMD) & 0x02
            self.outb(DATA, p)
        out = []
        for _ in range(replies):
            assert self.inb(CMD) & OBF, f"no reply to {cmd:#x}"
            out.append(self.inb(DATA))
        return out

    def flush(self):
        n = 0
        while self.inb(CMD) & OBF:
            self.inb(DATA)
            n += 1
            assert n < 16, "OBF stuck: Linux would report 'No controller found'"
        return n

    def isr(self):
        """i8042_interrupt(): read status, then one byte if OBF."""
        if self.inb(CMD) & OBF:
            return self.inb(DATA)
        return None


@pytest.fixture
def env():
    return Env()


def test_bus_rows_leave_0x61_to_0x63_free(env):
    bus = env.ctx.pio_bus
    assert bus.find(0x60) == (env.dev.data_port, 0)
    assert bus.find(0x64) == (env.dev.command_port, 0)
    for port in (0x5F, 0x61, 0x62, 0x63, 0x65):
        assert bus.find(port) is None


def test_initial_status(env):
    st = env.inb(CMD)
    assert not st & OBF and st & SYS and st & UNLOCKED   # no keylock warning
    assert env.flush() == 0


def test_self_and_interface_tests(env):
    assert env.command(0xAA, replies=1) == [0x55]
    assert env.command(0xAB, replies=1) == [0x00]
    assert env.irq.count == 0               # controller replies are polled, not IRQs


def test_linux_controller_init_sequence(env):
    env.flush()
    ctr = [env.command(0x20, replies=1)[0] for _ in range(2)]
    assert ctr[0] == ctr[1] == CTR_KBDINT | SYS   # Firecracker's default CTR (0x05)
    new = (ctr[0] | CTR_KBDDIS) & ~CTR_KBDINT
    assert not new & CTR_XLATE              # Linux goes "direct": untranslated set 2
    env.command(0x60, [new])
    assert env.command(0x20, replies=1) == [new]
    assert env.flush() == 0
    # i8042_enable_kbd_port()
    new = (new & ~CTR_KBDDIS) | CTR_KBDINT
    env.command(0x60, [new])
    assert env.command(0x20, replies=1) == [new]
    assert env.irq.count == 0


def test_status_cmd_bit_tracks_last_port_written(env):
    env.outb(CMD, 0x60)
    assert env.inb(CMD) & 0x08
    env.outb(DATA, 0x45)
    assert not env.inb(CMD) & 0x08


def test_kbd_and_aux_enable_disable(env):
    env.command(0xAD)
    assert env.command(0x20, replies=1)[0] & CTR_KBDDIS
    env.command(0xAE)
    assert not env.command(0x20, replies=1)[0] & CTR_KBDDIS
    env.command(0xA7)
    assert env.command(0x20, replies=1)[0] & CTR_AUXDIS
    env.command(0xA8)
    assert not env.command(0x20, replies=1)[0] & CTR_AUXDIS


def test_kbd_loop_echo_and_mode_and_output_port(env):
    assert env.command(0xD2, [0x5A], replies=1) == [0x5A]
    assert env.irq.count == 1               # arrives "from the keyboard"
    assert env.command(0xCA, replies=1) == [0x01]
    env.command(0xCB, [0x00])
    assert env.command(0xCA, replies=1) == [0x00]
    assert env.command(0xD0, replies=1)[0] & 0x01
    env.command(0xD1, [0xDF])               # the A20 gate dance: bit 0 set, no reset
    assert env.exits == []


def test_keyboard_commands_are_acked(env):
    env.outb(DATA, 0xF4)
    assert env.isr() == 0xFA
    env.outb(DATA, 0xFF)
    assert [env.isr(), env.isr()] == [0xFA, 0xAA]
    assert env.isr() is None


def test_reset_requests_guest_reset_exit_once(env):
    for _ in range(10):                     # Linux's reboot=k loop
        env.outb(CMD, 0xFE)
    assert len(env.exits) == 1
    assert env.exits[0].reason is ExitReason.GUEST_RESET
    assert env.exits[0].detail == "i8042 reset (0xFE)"
    assert env.dev.resets == 10


def test_output_port_reset_line(env):
    env.command(0xD1, [0x02])               # bit 0 low: CPU reset asserted
    assert [e.reason for e in env.exits] == [ExitReason.GUEST_RESET]


def deliver(env):
    """Run the guest ISR once per IRQ edge until no edges are pending."""
    got, handled = [], 0
    while handled < env.irq.count:
        handled += 1
        byte = env.isr()
        if byte is not None:
            got.append(byte)
    return got, handled


def test_ctrl_alt_del_set2_by_default(env):
    assert env.dev.send_ctrl_alt_del()
    got, edges = deliver(env)
    assert got == [0x14, 0x11, 0xE0, 0x71]  # Ctrl, Alt, Del make codes (set 2)
    assert edges == 4                        # one IRQ 1 edge per byte
    assert not env.inb(CMD) & OBF


def test_ctrl_alt_del_set1_when_translating(env):
    env.command(0x60, [CTR_KBDINT | SYS | CTR_XLATE])
    assert env.dev.send_ctrl_alt_del()
    got, edges = deliver(env)
    assert got == [0x1D, 0x38, 0xE0, 0x53]  # the same keys, translated to set 1
    assert edges == 4


def test_ctrl_alt_del_waits_for_disabled_keyboard(env):
    env.command(0x60, [SYS | CTR_KBDDIS])   # Linux during init: kbd off, no IRQ
    assert env.dev.send_ctrl_alt_del()
    assert env.irq.count == 0 and not env.inb(CMD) & OBF
    env.command(0x60, [SYS | CTR_KBDINT])   # i8042_enable_kbd_port()
    got, edges = deliver(env)
    assert got == [0x14, 0x11, 0xE0, 0x71] and edges == 4


def test_enabling_kbdint_with_byte_waiting_fires(env):
    env.command(0x60, [SYS])                # kbd enabled, interrupts off
    env.dev.send_ctrl_alt_del()
    assert env.irq.count == 0 and env.inb(CMD) & OBF
    env.command(0x60, [SYS | CTR_KBDINT])
    got, _ = deliver(env)
    assert got == [0x14, 0x11, 0xE0, 0x71]


def test_command_reply_does_not_lose_scan_codes(env):
    env.dev.send_ctrl_alt_del()
    assert env.isr() == 0x14
    assert env.command(0x20, replies=1) == [CTR_KBDINT | SYS]   # displaces 0x11
    rest = [env.isr() for _ in range(3)]
    assert rest == [0x11, 0xE0, 0x71]


def test_ctrl_alt_del_refused_when_queue_full(env):
    env.command(0x60, [SYS | CTR_KBDDIS])
    assert all(env.dev.send_ctrl_alt_del() for _ in range(4))   # 16 bytes
    assert not env.dev.send_ctrl_alt_del()


def test_non_byte_access_is_ignored(env):
    assert env.ctx.pio_bus.read(DATA, 2) == 0xFFFF
    env.ctx.pio_bus.write(CMD, 2, 0xFE)
    assert env.exits == [] and env.dev.bad_accesses == 2


def test_plugin_loads_through_entry_points():
    reg = PluginManager(blocked=[]).device_registry()
    assert "i8042" in reg and "serial" in reg
    assert reg.get("i8042") is plugin.I8042Kind
    with pytest.raises(ConfigError, match="cannot be blocked"):   # essential plugins
        PluginManager(blocked=["serial"])
