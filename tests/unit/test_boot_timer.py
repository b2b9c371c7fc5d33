"""boot-timer plugin: the magic byte at the fixed address records the boot time."""

import logging
import threading
import types

import pytest

from nodesvc.vmm.bus import Bus
from nodesvc.vmm.errors import ConfigError
from nodesvc_boot_timer import BOOT_TIMER_ADDR, MAGIC_BOOT_COMPLETE, BootTimer
from nodesvc_boot_timer.plugin import attach, validate


def test_magic_byte_records_boot_time(caplog):
    t = BootTimer(start=0.0)
    bus = Bus("mmio")
    bus.insert(BOOT_TIMER_ADDR, 0x1000, t)
    with caplog.at_level(logging.INFO, logger="nodesvc.boot_timer"):
        bus.write(BOOT_TIMER_ADDR, 1, MAGIC_BOOT_COMPLETE)
    assert t.boot_time is not None and t.boot_time > 0 and t.signals == 1
    assert "Guest-boot-time =" in caplog.text
    first = t.boot_time
    bus.write(BOOT_TIMER_ADDR, 1, MAGIC_BOOT_COMPLETE)   # later signals are logged, not kept
    assert t.boot_time == first and t.signals == 2


@pytest.mark.parametrize("offset, size, value", [(0, 1, 122), (1, 1, 123), (0, 4, 123), (0, 2, 123)])
def test_anything_else_is_ignored(offset, size, value):
    t = BootTimer()
    t.write(offset, size, value)
    assert t.boot_time is None and t.signals == 0 and t.read(0, 1) == 0


def test_wait_returns_when_the_guest_signals():
    t = BootTimer()
    assert t.wait(0.01) is None
    threading.Timer(0.05, t.write, (0, 1, MAGIC_BOOT_COMPLETE)).start()
    assert t.wait(5) is not None


def test_attach_places_it_below_the_virtio_windows():
    ctx = types.SimpleNamespace(mmio_bus=Bus("mmio"))
    dev = attach(ctx, {})
    assert ctx.mmio_bus.find(0xC000_0000) == (dev, 0)
    assert ctx.mmio_bus.find(0xC000_0FFF) == (dev, 0xFFF)
    assert ctx.mmio_bus.find(0xC000_1000) is None
    assert BOOT_TIMER_ADDR + 0x1000 <= 0xD000_0000   # the VMM's first virtio window


def test_config_takes_no_keys():
    validate({})
    validate(None)
    with pytest.raises(ConfigError, match="boot-timer.address: unknown key"):
        validate({"address": 1})


def test_registered_through_the_entry_point():
    from nodesvc.plugins import PluginManager
    assert "boot-timer" in PluginManager().device_registry()
