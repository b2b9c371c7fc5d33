"""Tiny freestanding guests (tests/guests/*.c) booted by the real VMM on /dev/kvm."""

import shutil

import pytest

from nodesvc.vmm.config import config_from_flags


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
def run_tiny(tiny_guest, jail_base):
    """Boot a tiny guest the way the node does: jailed (nodesvc.testing.jailed)."""
    def run(name, *, vcpus=1, mem_mib=32, boot_args="", timeout=20.0, console_in_fd=None,
            before_run=None, devices=()):
        from nodesvc.testing.jailed import JailedVm
        cfg = config_from_flags(kernel=str(tiny_guest(name)), initrd=None, boot_args=boot_args,
                                vcpus=vcpus, mem_mib=mem_mib)
        cfg.devices.extend(devices)
        vm = JailedVm(cfg, jail_base=jail_base, console_in_fd=console_in_fd)
        vm.start()
        try:
            if before_run is not None:
                before_run(vm, vm.sink)
            if vm.wait(timeout) is None:
                vm.stop(f"timeout after {timeout:.1f}s")
        finally:
            result = vm.shutdown()
        return TinyRun(vm, result, vm.sink)
    return run
