"""A tiny guest runs to its end inside a real jail with every filter in place: the
"vmm" baseline, "vcpu"/"loop" through MicroVm's thread hooks, "control" after start.

The zygote pattern in small: a warm-up VM built before the jail imports everything and
loads the plugins once (inside the jail there is no Python on disk, and the import guard
turns any lazy import into a loud ImportError); the jailed build reuses those plugins.
"""

from __future__ import annotations

import shutil

import pytest

from nodesvc.vmm.config import config_from_flags
from nodesvc.vmm.console import CaptureSink
from nodesvc.vmm.vm import MicroVm
from nodesvc_jailer import Limits, seccomp
from nodesvc_jailer.cleanup import read_fault
from tests.jailer.conftest import report

pytestmark = [pytest.mark.jail, pytest.mark.kvm]


@pytest.fixture
def tiny_guest():
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed: cannot build the tiny guests")
    from tests.guests.build import build_guest
    return build_guest


def test_tiny_guest_runs_jailed_under_all_filters(jail_env, tiny_guest):
    kernel = str(tiny_guest("hello"))
    cfg = config_from_flags(kernel=kernel, initrd=None, boot_args="", vcpus=2, mem_mib=32)
    warm = MicroVm(cfg, vm_id="warm", console_out=CaptureSink())
    assert warm.run(timeout=20).reason.value == "guest-reset"
    plugins = warm._plugins

    def body(out, go):
        sink = CaptureSink()
        vm = MicroVm(cfg, vm_id="jailed", console_out=sink, plugins=plugins,
                     thread_hooks=seccomp.thread_hooks())
        vm.start()
        seccomp.install("control")      # last, so the vCPU/loop threads don't inherit it
        res = vm.wait(20)
        vm.shutdown()
        report(out, reason=res.reason.value, console=sink.text())

    # the kernel image is bound read-only into the jail (the node will pass an fd instead)
    j = jail_env(body, ro_binds=(kernel,), limits=Limits(memory_bytes=256 << 20, pids=16))
    res = j.result(timeout=30)
    assert res == {"reason": "guest-reset", "console": "HELLO FROM TINY GUEST\n"}, \
        read_fault(j.vm_id, j.jail.base_dir)
    assert j.wait() == 0
    assert read_fault(j.vm_id, j.jail.base_dir) is None
