"""Test kit for device plugins (ours and third parties'): `pip install nodesvc[test]`.

- `GuestDriver` (+ `GuestAllocator`, `CountingIrq`): an in-process virtio driver that
  programs a `VirtioMmioTransport` through its registers and lays out rings in real
  guest memory, as Linux does;
- `VirtioConformance`: the suite every virtio device runs (subclass it in a test
  module, implement `make_device(tmp_path)`); it needs pytest, so it is imported
  on first use;
- `InlineLoop`, `ManualLoop`, `FakeLimiter`: what the VMM hands a device, faked.
"""

from .driver import CountingIrq, DriverQueue, GuestAllocator, GuestDriver
from .fakes import FakeLimiter, InlineLoop, ManualLoop

__all__ = ["CountingIrq", "DriverQueue", "GuestAllocator", "GuestDriver", "FakeLimiter",
           "InlineLoop", "ManualLoop", "VirtioConformance"]


def __getattr__(name: str):
    if name == "VirtioConformance":   # pytest is a test dependency, not a runtime one
        import pytest
        pytest.register_assert_rewrite(f"{__name__}.conformance")  # readable failures
        from .conformance import VirtioConformance
        return VirtioConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
