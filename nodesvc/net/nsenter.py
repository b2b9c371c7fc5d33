"""Entering a network namespace for one call: what `tap` and `netns` both need, kernel only.

Entering a namespace is per *thread* on Linux (setns(2) with CLONE_NEWNET), so
`run_in_netns` runs its function on a short-lived thread that joined the
namespace: fds and sockets it creates stay bound to that namespace and work from
any thread afterwards, and the caller's own namespace never changes. No pyroute2
here, so opening a TAP in a namespace needs only the kernel.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from typing import Any, Callable

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"   # where `ip netns` (and pyroute2) bind-mount named namespaces
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(OSError):
    pass


def netns_path(ns: str) -> str:
    """A namespace given by name ("vm0") or by path ("/run/netns/vm0", "/proc/1/ns/net")."""
    if not isinstance(ns, str) or not ns:
        raise ValueError("network namespace must be a non-empty name or path")
    if "/" in ns:
        return ns
    if ns in (".", ".."):
        raise ValueError(f"bad network namespace name {ns!r}")
    return os.path.join(NETNS_RUN_DIR, ns)


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if hasattr(os, "setns"):  # Python ≥ 3.12
            os.setns(fd, CLONE_NEWNET)
        elif _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(ns: str | None, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Call `fn(*args, **kwargs)` inside namespace `ns` (None: here) and return its result."""
    if ns is None:
        return fn(*args, **kwargs)
    path = netns_path(ns)
    if not os.path.exists(path):
        raise NetnsError(errno.ENOENT, f"network namespace {ns!r} does not exist ({path})")
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            _setns(path)
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed back to the caller's thread
            box["error"] = e

    t = threading.Thread(target=target, name=f"netns:{os.path.basename(path)}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")
