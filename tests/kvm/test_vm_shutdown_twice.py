"""MicroVm.shutdown() is idempotent: a second call (and a pause, resume or stop after it)
must not touch a vCPU's kvm_run page, which close() has unmapped. It used to segfault,
so the VM runs in a child process and the test reads its exit status."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kvm
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from nodesvc.vmm.config import config_from_flags
from nodesvc.vmm.console import CaptureSink
from nodesvc.vmm.vm import MicroVm
cfg = config_from_flags(kernel=sys.argv[1], vcpus=2, mem_mib=32,
                        boot_args="count=100000 delay=500 cpus=2")
sink = CaptureSink()
vm = MicroVm(cfg, vm_id="twice", console_out=sink)
vm.start()
assert sink.wait_for(b"CPU 1 3\\n", 20), sink.text()
first = vm.shutdown()
second = vm.shutdown()
vm.pause(); vm.resume(); vm.stop("again")
print(first.reason.name, second is first, flush=True)
"""


def test_second_shutdown_and_later_calls_touch_no_unmapped_vcpu(tiny_guest):
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_guest("counter"))], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    died = f"killed by {signal.Signals(-p.returncode).name}" if p.returncode < 0 else ""
    assert p.returncode == 0, f"{died} {p.stderr[-2000:]}"
    assert p.stdout.split() == ["STOPPED", "True"], p.stdout     # the same exit, kept
