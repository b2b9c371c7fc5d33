"""nodesvc.net: namespaces, TAP creation/moving/opening with pyroute2, all inside test namespaces."""

import errno
import os
import socket
import time

import pytest

from nodesvc.net import TapError, check_ifname, open_tap
from nodesvc.net.netns import (NetNamespace, NetnsError, list_netns, move_link, netns_path,
                               run_in_netns)


def _my_netns() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def test_namespace_is_created_and_removed_even_on_error():
    with pytest.raises(RuntimeError):
        with NetNamespace("nettest") as ns:
            name = ns.name
            assert name in list_netns() and os.path.exists(netns_path(name))
            raise RuntimeError("boom")
    assert name not in list_netns()


def test_run_in_netns_returns_raises_and_leaves_caller_alone(netns):
    here = _my_netns()
    inside = netns.run(_my_netns)
    assert inside != here and _my_netns() == here
    with pytest.raises(ZeroDivisionError):
        netns.run(lambda: 1 / 0)
    assert run_in_netns(None, _my_netns) == here


def test_missing_namespace_is_a_clear_error():
    with pytest.raises(NetnsError, match="does not exist"):
        run_in_netns("nodesvc-no-such-ns", lambda: None)
    with pytest.raises(NetnsError):
        open_tap("tap0", "nodesvc-no-such-ns")


def test_tap_created_inside_namespace_only(netns):
    idx = netns.create_tap("ttap0", mtu=1400, uid=0)
    info = netns.link_info("ttap0")
    assert info["index"] == idx and info["mtu"] == 1400
    assert "ttap0" not in [n for _, n in socket.if_nameindex()]  # not in our namespace


def test_open_tap_in_namespace(netns):
    netns.create_tap("ttap1")
    netns.sysctl("net.ipv6.conf.ttap1.disable_ipv6", 1)
    netns.add_address("ttap1", "192.0.2.1", 24)
    netns.add_neighbour("ttap1", "192.0.2.9", "02:00:00:00:00:09")
    with open_tap("ttap1", netns.name) as tap:
        assert tap.vnet_hdr_len == 12
        with pytest.raises(BlockingIOError):
            os.read(tap.fd, 100)  # non-blocking
        with pytest.raises(TapError) as e:  # a TAP has one owner
            open_tap("ttap1", netns.name)
        assert e.value.errno == errno.EBUSY and "ttap1" in str(e.value)
        s = netns.socket()
        try:
            s.sendto(b"ping", ("192.0.2.9", 7))
            deadline = time.monotonic() + 2
            while True:
                try:
                    frame = os.read(tap.fd, 2048)
                    break
                except BlockingIOError:
                    assert time.monotonic() < deadline, "no frame on the TAP"
                    time.sleep(0.01)
        finally:
            s.close()
        assert frame[12:18] == bytes.fromhex("020000000009") and frame.endswith(b"ping")


def test_move_tap_between_namespaces(netns):
    with NetNamespace("nettest") as other:
        other.create_tap("ttap2")
        move_link("ttap2", netns.name, src_ns=other.name)
        netns.set_link("ttap2", up=True, mac="02:00:00:00:00:07")
        assert netns.link_info("ttap2")["mac"] == "02:00:00:00:00:07"
        with other.ipr() as ip:
            assert not ip.link_lookup(ifname="ttap2")


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "a b", "."])
def test_bad_interface_names(name):
    with pytest.raises(ValueError):
        check_ifname(name)
