"""Network namespaces and TAP plumbing with pyroute2, for tests, tooling and the node service.

Namespaces are the named kind `ip netns` makes (a bind mount under /run/netns),
so `ip netns exec NAME ...` sees them too. A namespace is given by name or path.

Entering a namespace for one call (`run_in_netns`) is in `nsenter`, which `tap`
uses too.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from pyroute2 import IPRoute, NetNS
from pyroute2 import netns as _pyr_netns

# entering a namespace lives in nsenter (kernel only); re-exported as part of this API
from .nsenter import NETNS_RUN_DIR, NetnsError, netns_path, run_in_netns  # noqa: F401
from .tap import check_ifname

_names = itertools.count()


def socket_in_netns(ns: str | None, family: int = socket.AF_INET,
                    type: int = socket.SOCK_DGRAM, proto: int = 0) -> socket.socket:
    """A socket created inside `ns` (it stays there; use it from any thread)."""
    return run_in_netns(ns, socket.socket, family, type, proto)


# --- namespaces ----------------------------------------------------------------------

def list_netns() -> list[str]:
    return sorted(_pyr_netns.listnetns())


def create_netns(name: str) -> str:
    """Create named namespace `name` (error if it exists); returns its path. Loopback is up."""
    path = netns_path(name)
    if "/" in name:
        raise ValueError(f"create_netns wants a name, not a path: {name!r}")
    if os.path.exists(path):
        raise NetnsError(errno.EEXIST, f"network namespace {name!r} already exists")
    _pyr_netns.create(name)
    with ipr(name) as ip:
        ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")
    return path


def remove_netns(name: str) -> None:
    """Delete a named namespace; missing is fine. Its TAPs go when the last fd into it closes."""
    if os.path.exists(netns_path(name)):
        _pyr_netns.remove(name)


@contextmanager
def ipr(ns: str | None = None) -> Iterator[IPRoute]:
    """A pyroute2 rtnetlink handle inside `ns` (or the current namespace)."""
    handle = IPRoute() if ns is None else NetNS(ns)
    try:
        yield handle
    finally:
        handle.close()


def _index(ip, ifname: str) -> int:
    found = ip.link_lookup(ifname=ifname)
    if not found:
        raise NetnsError(errno.ENODEV, f"no interface {ifname!r} in this namespace")
    return found[0]


# --- links ---------------------------------------------------------------------------

def create_tap(name: str, ns: str | None = None, *, uid: int | None = None,
               gid: int | None = None, mtu: int | None = None, up: bool = True) -> int:
    """Create persistent TAP `name` inside `ns`, optionally owned by uid/gid (so an
    unprivileged VMM may open it). Returns its ifindex."""
    check_ifname(name)
    owner = {k: v for k, v in (("uid", uid), ("gid", gid)) if v is not None}
    with ipr(ns) as ip:
        ip.link("add", ifname=name, kind="tuntap", mode="tap", **owner)
        idx = _index(ip, name)
        _set_link(ip, idx, mtu=mtu, up=up)
    return idx


def _set_link(ip, idx: int, *, mtu: int | None = None, mac: str | None = None,
              up: bool | None = None) -> None:
    attrs: dict[str, Any] = {}
    if mtu is not None:
        attrs["mtu"] = mtu
    if mac is not None:
        attrs["address"] = mac
    if up is not None:
        attrs["state"] = "up" if up else "down"
    if attrs:
        ip.link("set", index=idx, **attrs)


def set_link(ns: str | None, ifname: str, *, mtu: int | None = None, mac: str | None = None,
             up: bool | None = None) -> None:
    with ipr(ns) as ip:
        _set_link(ip, _index(ip, ifname), mtu=mtu, mac=mac, up=up)


def move_link(ifname: str, ns: str, *, src_ns: str | None = None) -> None:
    """Move interface `ifname` from `src_ns` (default: current) into `ns`. It arrives down."""
    with ipr(src_ns) as ip:
        ip.link("set", index=_index(ip, ifname), net_ns_fd=ns)


def delete_link(ns: str | None, ifname: str) -> None:
    with ipr(ns) as ip:
        found = ip.link_lookup(ifname=ifname)
        if found:
            ip.link("del", index=found[0])


def add_address(ns: str | None, ifname: str, address: str, prefixlen: int) -> None:
    with ipr(ns) as ip:
        ip.addr("add", index=_index(ip, ifname), address=address, prefixlen=prefixlen)


def add_neighbour(ns: str | None, ifname: str, ip_address: str, mac: str) -> None:
    """A permanent ARP/NDP entry, so traffic to `ip_address` needs no resolution."""
    with ipr(ns) as ip:
        ip.neigh("replace", dst=ip_address, lladdr=mac, ifindex=_index(ip, ifname),
                 state="permanent")


def link_info(ns: str | None, ifname: str) -> dict[str, Any]:
    with ipr(ns) as ip:
        link = ip.get_links(_index(ip, ifname))[0]
        return {"index": link["index"], "mtu": link.get("IFLA_MTU"),
                "mac": link.get("IFLA_ADDRESS"), "state": link.get("IFLA_OPERSTATE"),
                "stats": dict(link.get("IFLA_STATS64") or {})}


def write_sysctl(ns: str | None, key: str, value: str | int) -> None:
    """Set a net.* sysctl inside `ns` (e.g. "net.ipv6.conf.tap0.disable_ipv6", 1)."""
    path = "/proc/sys/" + key.replace(".", "/")

    def write() -> None:
        with open(path, "w") as f:
            f.write(str(value))
    run_in_netns(ns, write)


# --- a namespace with a lifetime -------------------------------------------------------

class NetNamespace:
    """A uniquely named namespace removed on close(); the object tests and tools hold.

        with NetNamespace("nettest") as ns:
            ns.create_tap("tap0", mtu=1500)
            ns.add_address("tap0", "192.0.2.1", 24)
            sock = ns.socket()
    """

    def __init__(self, prefix: str = "nodesvc"):
        self.name = f"{prefix}-{os.getpid()}-{next(_names)}"
        self.path = create_netns(self.name)

    def run(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        return run_in_netns(self.name, fn, *args, **kwargs)

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM,
               proto: int = 0) -> socket.socket:
        return socket_in_netns(self.name, family, type, proto)

    def ipr(self):
        return ipr(self.name)

    def create_tap(self, name: str, **kw) -> int:
        return create_tap(name, self.name, **kw)

    def set_link(self, ifname: str, **kw) -> None:
        set_link(self.name, ifname, **kw)

    def add_address(self, ifname: str, address: str, prefixlen: int) -> None:
        add_address(self.name, ifname, address, prefixlen)

    def add_neighbour(self, ifname: str, ip_address: str, mac: str) -> None:
        add_neighbour(self.name, ifname, ip_address, mac)

    def link_info(self, ifname: str) -> dict[str, Any]:
        return link_info(self.name, ifname)

    def sysctl(self, key: str, value: str | int) -> None:
        write_sysctl(self.name, key, value)

    def close(self) -> None:
        remove_netns(self.name)

    def __enter__(self) -> "NetNamespace":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
