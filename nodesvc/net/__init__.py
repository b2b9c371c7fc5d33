"""Host-side networking: TAP fds for the VMM, network namespaces and links (pyroute2).

`tap` needs only the kernel; `netns` (imported lazily here) needs pyroute2.
"""

from .tap import Tap, TapError, VNET_HDR_LEN, check_ifname, open_tap

__all__ = ["Tap", "TapError", "VNET_HDR_LEN", "check_ifname", "open_tap"]
