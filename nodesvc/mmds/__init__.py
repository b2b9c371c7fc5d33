"""MMDS, the microVM metadata service (Firecracker's), as a pure-Python library.

    store.MmdsStore    the JSON document (PUT / RFC 7396 PATCH, size limit, rendering)
    token              V2 session tokens (HMAC-sealed expiry, per-VMM random key)
    http               bounded HTTP/1.x parsing and micro-http-shaped responses
    service.Mmds       store + tokens + version: one request in, one response out
    tcp, stack         the minimal Ethernet/ARP/IPv4/TCP server the net device feeds
    config             the `mmds-config` section

No threads, no sockets, no clock of its own beyond `time.monotonic` defaults:
the net device owns the frames and the timer. See docs/mmds.md.
"""

from .service import V1, V2, Mmds
from .stack import DEFAULT_IPV4, DEFAULT_MAC, MmdsStack, check_ipv4_address
from .store import DEFAULT_LIMIT, LimitExceeded, MmdsError, MmdsStore, NotInitialized

__all__ = ["V1", "V2", "Mmds", "MmdsStack", "MmdsStore", "MmdsError", "LimitExceeded",
           "NotInitialized", "DEFAULT_IPV4", "DEFAULT_MAC", "DEFAULT_LIMIT",
           "check_ipv4_address"]
