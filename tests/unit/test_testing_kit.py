"""nodesvc.testing is what a third-party device plugin tests with: the conformance suite
runs from the installed package against a device that lives outside this repository."""

import inspect
import os
import subprocess
import sys

import pytest

from nodesvc.testing import CountingIrq, GuestDriver, InlineLoop, VirtioConformance
from nodesvc.vmm.memory import GuestMemory
from nodesvc.vmm.virtio import VirtioDevice, VirtioMmioTransport


class Hi(VirtioDevice):
    """docs/plugins.md's example: answers every chain with b"hi"."""
    device_id = 42
    queue_sizes = (128,)

    def queue_notify(self, index):
        q = self.queues[index]
        while (chain := q.pop()) is not None:   # raises VirtqueueError on hostile chains
            q.add_used(chain.head, q.write_chain(chain, b"hi"))
        self.interrupt.signal_used(q)


class TestTinyDeviceConformance(VirtioConformance):
    expected_device_id = 42

    def make_device(self, tmp_path):
        return Hi()


def test_a_plugin_outside_the_repo_runs_the_suite(tmp_path):
    """Only the installed package: no conftest, no tests/ on sys.path, cwd elsewhere."""
    (tmp_path / "test_hi.py").write_text(
        "from nodesvc.testing import VirtioConformance\n"
        "from nodesvc.vmm.virtio import VirtioDevice\n\n"
        + inspect.getsource(Hi) + "\n"
        + inspect.getsource(TestTinyDeviceConformance))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--rootdir", str(tmp_path), str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    n = sum(1 for name in dir(VirtioConformance) if name.startswith("test_"))
    assert f"{n} passed" in p.stdout, p.stdout


class Sloppy(VirtioDevice):
    """Swallows the parser's complaint and completes the chain as if it were fine."""
    device_id = 42
    queue_sizes = (8,)

    def queue_notify(self, index):
        q = self.queues[index]
        try:
            q.pop()
        except Exception:
            pass
        q.add_used(0, 0)


def test_the_suite_fails_a_device_that_ignores_hostile_chains():
    mem = GuestMemory(8 << 20)
    t = VirtioMmioTransport(Sloppy(), memory=mem, irq=CountingIrq(), event_loop=InlineLoop())
    try:
        with pytest.raises(AssertionError, match="queue 0"):
            TestTinyDeviceConformance().test_wild_buffer_address_is_contained(
                (mem, t.device, t, GuestDriver(t, mem)))
    finally:
        t.close()
        mem.close()
