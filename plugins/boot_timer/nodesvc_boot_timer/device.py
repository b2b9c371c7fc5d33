"""Firecracker's boot-timer pseudo device: the guest says "booted" with one MMIO byte.

The guest (Firecracker's test init, or our in-guest agent) writes the magic value
123 as a single byte to offset 0 of this device's window; the device records the
time since it was attached — which is during the VM build, just before the vCPUs
start — logs it the way Firecracker does, and exposes it as `boot_time` (seconds).
Everything else reads as 0 and is ignored.

Address: 0xC000_0000, Firecracker's x86_64 BOOT_DEVICE_MEM_START (the first 4 KiB
of the 32-bit MMIO gap [0xC000_0000, 4 GiB)). It is below the virtio windows the
VMM hands out from 0xD000_0000 up in 4 KiB steps, and far from the IOAPIC
(0xFEC0_0000) and LAPIC (0xFEE0_0000). Guest RAM never maps there: above 3 GiB the
VMM puts RAM at 4 GiB. So guests written for Firecracker (e.g. `devmem 0xc0000000 8
123`) work unchanged.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("nodesvc.boot_timer")

BOOT_TIMER_ADDR = 0xC000_0000
BOOT_TIMER_LEN = 0x1000
MAGIC_BOOT_COMPLETE = 123


class BootTimer:
    def __init__(self, start: float | None = None, start_cpu: float | None = None):
        self.start = time.monotonic() if start is None else start
        self.start_cpu = time.process_time() if start_cpu is None else start_cpu
        self.boot_time: float | None = None        # seconds, first signal
        self.boot_cpu_time: float | None = None    # VMM process CPU seconds, first signal
        self.signals = 0
        self._booted = threading.Event()

    # -- bus device (vCPU threads) ------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        # Only a single byte at offset 0 counts, exactly as in Firecracker.
        if offset != 0 or size != 1 or value != MAGIC_BOOT_COMPLETE:
            return
        elapsed = time.monotonic() - self.start
        cpu = time.process_time() - self.start_cpu
        self.signals += 1
        if self.boot_time is None:
            self.boot_time, self.boot_cpu_time = elapsed, cpu
            self._booted.set()
        us, cpu_us = int(elapsed * 1e6), int(cpu * 1e6)
        log.info("Guest-boot-time = %6d us %d ms, %6d CPU us %d CPU ms",
                 us, us // 1000, cpu_us, cpu_us // 1000)

    # -- for tests and tooling ------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> float | None:
        """Block until the guest signals boot (or `timeout`); return `boot_time`."""
        self._booted.wait(timeout)
        return self.boot_time
