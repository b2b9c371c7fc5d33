"""MMDS through a real, jailed node service (the default): the node's document is in the
VMM's store before Start, and Put/Patch on a running VM reach the jailed VMM at once, under
its control-thread seccomp filter (a forbidden syscall would kill the VMM: it stays
RUNNING). The guest-side clients for this path are in tests/net/test_mmds_device.py (the
real device) and tests/net/test_mmds_jailed.py (its loop thread under the jail's filter).
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from nodesvc.core import InvalidSpec
from nodesvc.net.netns import NetNamespace
from nodesvc.vmm import actions as A
from tests.service.test_service_actions import echo_spec, node

pytestmark = pytest.mark.kvm
DOC = {"latest": {"meta-data": {"ami-id": "ami-0abc"}}}


@pytest.fixture
def tap_ns():
    if os.geteuid() != 0:
        pytest.skip("not root (network namespaces and TAPs)")
    ns = NetNamespace("nsvcmmds")
    try:
        ns.create_tap("tap0")
        yield ns
    finally:
        ns.close()


def mmds_spec(guest, ns) -> dict:
    return echo_spec(guest, network_interfaces=[
        {"iface_id": "eth0", "host_dev_name": "tap0", "netns": ns.name}],
        metadata_service={"version": "VERSION_V2", "network_interfaces": ["eth0"]})


def test_metadata_reaches_the_jailed_vmm_before_start_and_live(state_dir, guest, tap_ns):
    async def scenario():
        async with node(state_dir) as n:
            assert n.launcher.jailed
            await n.create_vm("md", mmds_spec(guest, tap_ns))
            await n.put_metadata("md", json.dumps(DOC))         # before the VMM exists
            await n.start_vm("md")
            h = n.vms["md"].handle
            assert h.supports(A.PutMetadata) and h.supports(A.PatchMetadata)
            # A PATCH straight to the VMM works only on a document it already holds: the
            # node's, put before Start.
            assert await h.call(A.PatchMetadata({"probe": "1"})) == A.Done()
            # live changes through the node go to the VMM at once (as a whole document)
            out = await n.patch_metadata("md", '{"latest": {"meta-data": {"x": "2"}}}')
            assert json.loads(out)["latest"]["meta-data"] == {"ami-id": "ami-0abc", "x": "2"}
            await n.put_metadata("md", '{"v": 3}')
            # the VMM's own checks: its store limit, as BadRequest
            with pytest.raises(A.BadRequest, match="51200"):
                await h.call(A.PutMetadata({"big": "x" * 60000}))
            with pytest.raises(InvalidSpec, match="51200"):             # the node's, first
                await n.put_metadata("md", json.dumps({"big": "x" * 60000}))
            st = await h.call(A.Status())
            assert st.state == "running"        # no seccomp kill on the control thread
            assert n.vms["md"].rec.state.value == "RUNNING"
    asyncio.run(scenario())

