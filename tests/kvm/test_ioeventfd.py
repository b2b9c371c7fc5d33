"""Queue notifications reach devices through ioeventfds registered at attach: a tiny
guest kicks virtio-rng N times and not one kick is an MMIO exit."""

import pytest

from nodesvc.vmm.config import DeviceSpec
from nodesvc.vmm.virtio.mmio import VirtioMmioTransport

pytestmark = pytest.mark.kvm
KICKS = 64


def _run(run_tiny):
    r = run_tiny("virtio_kick", boot_args=f"kicks={KICKS}",
                 devices=[DeviceSpec("virtio-rng", {})])
    assert f"KICKS {KICKS}" in r.lines, r.lines
    assert r.result.reason.value == "guest-reset"
    rng = r.vm.devices.get("virtio-rng", "entropy")
    return r, rng


def test_kicks_arrive_through_the_ioeventfd_not_the_mmio_trap(run_tiny):
    r, rng = _run(run_tiny)
    assert rng.bytes_served == KICKS * 16
    assert rng.transport.notify_traps == 0
    # register set-up and the status reads are the only MMIO exits the guest makes
    assert r.vm.stats()["exits"].get("mmio", 0) < KICKS


def test_without_the_ioeventfd_every_kick_is_an_exit(run_tiny, monkeypatch):
    """The control: the same guest with the ioeventfds left out traps every kick."""
    monkeypatch.setattr(VirtioMmioTransport, "register_notify_fds", lambda self: None)
    r, rng = _run(run_tiny)
    assert rng.bytes_served == KICKS * 16
    assert rng.transport.notify_traps == KICKS
    assert r.vm.stats()["exits"]["mmio"] >= KICKS
