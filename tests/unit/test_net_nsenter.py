"""nodesvc.net.tap needs only the kernel: opening a TAP in a namespace never imports
pyroute2 (nodesvc.net.netns), and netns and tap no longer import each other."""

import subprocess
import sys

PROBE = r"""
import sys
sys.modules["pyroute2"] = None            # as on a host without pyroute2
from nodesvc.net import open_tap
from nodesvc.net.nsenter import NetnsError
try:
    open_tap("vnet0", netns="nodesvc-no-such-ns")
except NetnsError as e:
    assert "does not exist" in str(e), e
assert "nodesvc.net.netns" not in sys.modules
print("ok")
"""


def test_tap_in_a_namespace_needs_no_pyroute2():
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == "ok\n", p.stderr


def test_netns_reexports_the_namespace_helpers():
    from nodesvc.net import netns, nsenter, tap
    assert netns.run_in_netns is nsenter.run_in_netns is tap.run_in_netns
    assert netns.NetnsError is nsenter.NetnsError
    assert "netns" not in vars(tap)
