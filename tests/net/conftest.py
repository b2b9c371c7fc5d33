"""Network tests: real TAP devices inside network namespaces the tests create.

Every test here needs root (namespaces, TAP creation) and /dev/net/tun; without
them they are skipped with the missing capability named. Addresses are
TEST-NET-1 (192.0.2.0/24) and exist only inside those namespaces; every wait is
bounded, and namespaces are removed even when a test fails.
"""

import os

import pytest


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "not root (network namespaces and TAP creation need CAP_NET_ADMIN/CAP_SYS_ADMIN)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is absent (no TUN/TAP support)"
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return "/dev/net/tun is not readable and writable"
    return None


MISSING = _missing()


def pytest_collection_modifyitems(config, items):
    if MISSING is None:
        return
    skip = pytest.mark.skip(reason=f"needs root and TUN/TAP: {MISSING}")
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)


@pytest.fixture
def make_rig():
    """`make_rig(**kw) -> NetRig`; every rig made is closed (netns removed) afterwards."""
    from nodesvc_virtio_net.testing import NetRig
    rigs = []

    def make(**kw):
        rig = NetRig(**kw)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


@pytest.fixture
def netns():
    from nodesvc.net.netns import NetNamespace
    ns = NetNamespace("nettest")
    try:
        yield ns
    finally:
        ns.close()
