"""Tiny freestanding guests (tests/guests/*.c) booted by the real VMM on /dev/kvm."""

import shutil

import pytest

from nodesvc.vmm.config import config_from_flags
from nodesvc.vmm.console import CaptureSink
from nodesvc.vmm.vm import MicroVm


@pytest.fixture(scope="session")
def tiny_guest():
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed: cannot build the tiny guests")
    from tests.guests.build import build_guest
    return build_guest


class TinyRun:
    def __init__(self, vm, result, sink):
        self.vm, self.result, self.sink = vm, result, sink

    @property
    def lines(self):
        return self.sink.text().splitlines()


@pytest.fixture
def run_tiny(tiny_guest):
    def run(name, *, vcpus=1, mem_mib=32, boot_args="", timeout=20.0, console_in_fd=None,
            before_run=None, devices=()):
        sink = CaptureSink()
        cfg = config_from_flags(kernel=str(tiny_guest(name)), initrd=None, boot_args=boot_args,
                                vcpus=vcpus, mem_mib=mem_mib)
        cfg.devices.extend(devices)
        vm = MicroVm(cfg, vm_id=f"tiny-{name}", console_out=sink, console_in_fd=console_in_fd)
        if before_run is not None:
            before_run(vm, sink)
        result = vm.run(timeout=timeout)
        return TinyRun(vm, result, sink)
    return run
