"""TEST ONLY. A device that, on a command byte from the guest, attempts one forbidden act
from inside the VMM process (tests/security/test_hostile_device.py). Inert unless
NODESVC_TEST_PLUGINS=1 is set in the VMM's environment."""

from .device import ACTS, PORT, HostileDevice

__all__ = ["ACTS", "PORT", "HostileDevice"]
