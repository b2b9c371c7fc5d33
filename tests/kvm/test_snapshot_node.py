"""Snapshots through the node: CreateSnapshot on a jailed VMM, restores into new jailed VMMs.

The node runs in this process; every VMM is a real process forked from the zygote into
its own jail, so the snapshot files reach it only as descriptors. The `counter` guest's
output across source and restored VM must be one uninterrupted count.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from contextlib import asynccontextmanager

import pytest

from nodesvc.core import Node, NodeConfig
from nodesvc.core.errors import InvalidSpec, WrongState
from nodesvc.server.convert import to_dict
from nodesvc.vmm.snapshot import format as F
from tests.service.conftest import vm_spec

pytestmark = pytest.mark.kvm
COUNT = 80


@asynccontextmanager
async def node(state_dir: str):
    if os.geteuid() != 0:
        pytest.skip("not root: VMMs run jailed (namespaces, cgroups, mknod)")
    n = Node(NodeConfig(state_dir=state_dir, vmm_metrics_interval_s=0))
    await n.open()
    try:
        yield n
    finally:
        for vm_id, e in list(n.vms.items()):
            if e.handle is not None:
                await n.stop_vm(vm_id, force=True)
        await n.close()


def console(n, vm_id) -> str:
    return b"".join(n.vms[vm_id].console.history()).decode()


async def wait_for(cond, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def counts(text: str) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(r"^CPU 0 (\d+)$", text, re.M)]


@pytest.fixture
def state_dir():
    d = os.path.join("/tmp", f"nsnap-{os.getpid()}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def spec(guest):
    return to_dict(vm_spec(str(guest("counter")), boot_args=f"count={COUNT} delay=500"))


def test_snapshot_and_restore_through_jailed_vmms(state_dir, tiny_guest):
    guest = tiny_guest
    async def main():
        async with node(state_dir) as n:
            await n.create_vm("src", spec(guest), start=True)
            assert await wait_for(lambda: "CPU 0 15\n" in console(n, "src")), console(n, "src")
            snap = await n.create_snapshot("src", "s1", resume=False)
            before = console(n, "src")
            assert n.get_vm("src").state.value == "PAUSED"
            assert snap["source_vm"] == "src" and snap["memory_bytes"] == 32 << 20
            assert snap["disk_bytes"] < 32 << 20      # the memory file is sparse
            assert [s["id"] for s in n.list_snapshots()] == ["s1"]
            await n.stop_vm("src", force=True)

            # Three clones at once, each in its own jail, from the same files.
            clones = [f"clone{i}" for i in range(3)]
            await asyncio.gather(*(n.restore_vm("s1", c) for c in clones))
            for c in clones:
                assert await wait_for(lambda c=c: "DONE" in console(n, c)), console(n, c)
                assert counts(before + console(n, c)) == list(range(COUNT)), console(n, c)
                assert "COUNTER START" not in console(n, c)   # no boot: a restore

            # Restored paused: no instruction runs until resumed.
            rec = await n.restore_vm("s1", "paused", resume=False)
            assert rec.state.value == "PAUSED"
            await asyncio.sleep(0.3)
            assert console(n, "paused") == ""
            await n.resume_vm("paused")
            assert await wait_for(lambda: "DONE" in console(n, "paused"))
    asyncio.run(main())


def test_a_corrupt_snapshot_leaves_no_vm(state_dir, tiny_guest):
    guest = tiny_guest
    async def main():
        async with node(state_dir) as n:
            await n.create_vm("src", spec(guest), start=True)
            assert await wait_for(lambda: "CPU 0 3\n" in console(n, "src"))
            snap = await n.create_snapshot("src", "s1")
            assert n.get_vm("src").state.value == "RUNNING"     # resumed after the save
            data = bytearray(open(snap["state_path"], "rb").read())
            data[F.HEADER_SIZE + 10] ^= 1
            open(snap["state_path"], "wb").write(bytes(data))
            with pytest.raises(WrongState, match="sha256"):
                await n.restore_vm("s1", "bad")
            assert "bad" not in n.vms
            with pytest.raises(InvalidSpec, match="no interface 'eth0'"):
                await n.restore_vm("s1", "bad2", overrides={
                    "network_interfaces": [{"iface_id": "eth0", "host_dev_name": "t0"}]})
            assert "bad2" not in n.vms
            n.delete_snapshot("s1")
            assert n.list_snapshots() == []
    asyncio.run(main())
