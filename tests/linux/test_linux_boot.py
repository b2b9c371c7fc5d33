"""One boot of the default guest proves the boot protocol, SMP, serial, i8042 and reset."""

import re
import time

import pytest

from nodesvc.testing.jailed import JailedVm
from nodesvc.vmm.config import config_from_flags
from nodesvc.vmm.exits import ExitReason

pytestmark = [pytest.mark.kvm, pytest.mark.linux]

#: Nested-PVM hosts need ~60-90 s to reach /init (KVM_HERE.md); bare metal needs < 1 s.
BOOT_BUDGET = 300


@pytest.fixture(scope="module")
def linux_boot(guest_kernel, jail_base):
    vmlinux, initramfs = guest_kernel
    vm = JailedVm(config_from_flags(kernel=str(vmlinux), initrd=str(initramfs), vcpus=2,
                                    mem_mib=256), vm_id="linux-boot", jail_base=jail_base)
    t0 = time.monotonic()
    result = vm.run(timeout=BOOT_BUDGET)
    return vm, vm.sink.text(), result, time.monotonic() - t0


def test_kernel_banner_and_command_line(linux_boot):
    vm, text, _, _ = linux_boot
    assert re.search(r"Linux version 6\.1\.\d+", text)
    assert "Command line: " + vm.cmdline in text
    assert "Hypervisor detected: KVM" in text


def test_boot_protocol_memory_map_and_initrd(linux_boot):
    _, text, _, _ = linux_boot
    assert "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable" in text
    assert "found SMP MP-table at [mem 0x0009fc00-" in text
    assert re.search(r"RAMDISK: \[mem 0x[0-9a-f]+-0x0fffffff\]", text)
    assert "Unpacking initramfs" in text or "Trying to unpack rootfs" in text


def test_both_vcpus_come_online(linux_boot):
    _, text, _, _ = linux_boot
    assert "smp: Brought up 1 node, 2 CPUs" in text


def test_serial_console_and_i8042_probe(linux_boot):
    _, text, _, _ = linux_boot
    assert re.search(r"serial8250: ttyS0 at I/O 0x3f8 \(irq = 4, base_baud = \d+\) is a 16550A", text)
    assert "i8042: Warning: Keylock active" not in text
    assert re.search(r"serio: i8042 KBD port at 0x60,0x64 irq 1", text)


def test_reaches_init_and_resets_cleanly(linux_boot):
    _, text, result, elapsed = linux_boot
    assert "Run /init as init process" in text
    # Either /init runs and resets with `reboot -f`, or (nested-PVM hosts, where guest user
    # space cannot run) init dies and panic=1 reboots: both reset through the i8042
    # (reboot=k). A run past BOOT_BUDGET is stopped, which is a different reason.
    assert result.reason is ExitReason.GUEST_RESET, result
