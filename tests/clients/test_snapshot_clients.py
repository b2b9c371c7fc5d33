"""Snapshots through the Python clients (sync and asyncio) and nodectl, against a real
node service whose VMMs run jailed. The `counter` tiny guest keeps its count in guest RAM:
a restored VM goes on counting from where its snapshot was taken."""

from __future__ import annotations

import asyncio
import json
import os
import re

import grpc
import pytest

from nodesvc_client import AsyncNodeClient, NodeError, SpecError, pb
from nodesvc_client.cli import main
from tests.clients.conftest import spec_dict

pytestmark = pytest.mark.kvm
C = grpc.StatusCode
COUNT = 50


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("not root: the node runs its VMMs jailed (namespaces, cgroups)")


@pytest.fixture
def ctl(shared_server, capsys):
    def run(*args):
        capsys.readouterr()
        rc = main(["--socket", shared_server.socket, *args])
        out, err = capsys.readouterr()
        return rc, out, err
    return run


def counter(guest) -> dict:
    """~60 ms a line (serial exits), so ~3 s of counting: a snapshot has time to land."""
    return spec_dict(guest("counter"), boot_args=f"count={COUNT} delay=20000")


def counts(text: str) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(r"^CPU 0 (\d+)$", text, re.M)]


def console_until(client, vm_id: str, marker: str | None = None) -> str:
    """The VM's console from its start: up to `marker`, or (None) until its VMM ends."""
    text = ""
    with client.stream_console(vm_id, include_history=True, timeout=60) as s:
        for chunk in s:
            text += chunk.decode()
            if marker and marker in text:
                break
    return text


ACTIVE = (pb.VM_STATE_RUNNING, pb.VM_STATE_PAUSED)


def drop(client, vm_id: str) -> None:
    """Stop (if it still runs: the counter ends by itself) and delete."""
    if client.get_vm(vm_id).state in ACTIVE:
        client.stop_vm(vm_id, force=True)
    client.delete_vm(vm_id)


def test_sync_client_snapshot_restore_list_delete(client, guest):
    client.create_vm("cs-src", counter(guest), start=True)
    console_until(client, "cs-src", "CPU 0 8\n")
    snap = client.create_snapshot("cs-src", "cs-1", resume=True)
    assert (snap.id, snap.source_vm, snap.memory_bytes) == ("cs-1", "cs-src", 32 << 20)
    assert client.get_vm("cs-src").state == pb.VM_STATE_RUNNING     # resumed
    with pytest.raises(NodeError) as ei:
        client.create_snapshot("cs-src", "cs-2", pause=False)
    assert ei.value.code == C.FAILED_PRECONDITION and "RUNNING" in ei.value.message
    assert [s.id for s in client.list_snapshots("cs-src")] == ["cs-1"]
    assert client.get_snapshot("cs-1").state_bytes == snap.state_bytes

    vm = client.restore_vm("cs-1", "cs-dst", paused=True, labels={"clone": "1"})
    assert vm.state == pb.VM_STATE_PAUSED and dict(vm.labels) == {"clone": "1"}
    client.resume_vm("cs-dst")
    after = console_until(client, "cs-dst")
    assert counts(after)[0] > 8 and counts(after)[-1] == COUNT - 1
    with pytest.raises(SpecError):
        client.restore_vm("cs-1", "cs-x", network_overrides=[{"iface": "eth0"}])
    client.delete_snapshot("cs-1")
    assert client.list_snapshots("cs-src") == []
    for vm_id in ("cs-src", "cs-dst"):
        drop(client, vm_id)


def test_async_client_snapshot_and_restore(target, guest):
    async def body(node):
        await node.create_vm("ca-src", counter(guest), start=True)   # counts for ~3 s
        snap = await node.create_snapshot("ca-src", "ca-1")
        assert snap.source_vm == "ca-src" and snap.disk_bytes < snap.memory_bytes
        assert (await node.get_vm("ca-src")).state == pb.VM_STATE_PAUSED  # no resume
        assert "ca-1" in [s.id for s in await node.list_snapshots()]
        vm = await node.restore_vm("ca-1", "ca-dst")
        assert vm.state == pb.VM_STATE_RUNNING
        with pytest.raises(NodeError) as ei:
            await node.restore_vm("ca-1", "ca-dst")
        assert ei.value.code == C.ALREADY_EXISTS
        with pytest.raises(NodeError) as ei:
            await node.get_snapshot("ca-none")
        assert ei.value.code == C.NOT_FOUND
        await node.delete_snapshot("ca-1")
        for vm_id in ("ca-src", "ca-dst"):
            if (await node.get_vm(vm_id)).state in ACTIVE:
                await node.stop_vm(vm_id, force=True)
            await node.delete_vm(vm_id)

    async def main_():
        async with AsyncNodeClient(target, timeout=30) as node:
            await body(node)
    asyncio.run(main_())


def test_nodectl_snapshot_snapshots_restore_rm(ctl, client, guest, tmp_path):
    client.create_vm("cn-src", counter(guest), start=True)
    console_until(client, "cn-src", "CPU 0 6\n")
    rc, out, err = ctl("snapshot", "cn-src", "--id", "cn-1")
    assert rc == 0, err
    header, row = out.strip().split("\n")
    assert header.split()[:4] == ["ID", "SOURCE", "VM", "SIZE"]
    assert row.split()[:2] == ["cn-1", "cn-src"] and "32MiB" in row
    assert "cn-src is PAUSED" in err
    rc, out, _ = ctl("get", "cn-src", "-o", "json")
    assert '"VM_STATE_PAUSED"' in out
    client.stop_vm("cn-src", force=True)
    before = console_until(client, "cn-src")

    rc, out, _ = ctl("snapshots")
    rows = {r.split()[0]: r.split() for r in out.strip().split("\n")[1:]}
    assert rows["cn-1"][1] == "cn-src" and rows["cn-1"][2] == "32MiB"
    rc, out, _ = ctl("snapshots", "--vm", "cn-src", "-o", "json")
    listed = json.loads(out)["snapshots"]
    assert [s["id"] for s in listed] == ["cn-1"] and int(listed[0]["memory_bytes"]) == 32 << 20

    rc, out, err = ctl("restore", "cn-1", "--id", "cn-dst")
    assert rc == 0, err
    assert out.split("\n")[1].split()[:2] == ["cn-dst", "RUNNING"]
    assert counts(before + console_until(client, "cn-dst")) == list(range(COUNT))
    rc, out, _ = ctl("restore", "cn-1", "--id", "cn-p", "--paused")
    assert rc == 0 and out.split("\n")[1].split()[:2] == ["cn-p", "PAUSED"]

    # --tap without IFACE= needs exactly one interface; this guest has none.
    rc, _, err = ctl("restore", "cn-1", "--id", "cn-x", "--tap", "tap7")
    assert rc == 1 and err.startswith("nodectl: INVALID_ARGUMENT: --tap tap7: say which")
    rc, _, err = ctl("restore", "cn-1", "--id", "cn-x", "--tap", "eth0=tap7")
    assert rc == 1 and "no interface 'eth0'" in err
    assert ctl("restore", "none", "--id", "cn-x")[2] == \
        "nodectl: NOT_FOUND: no snapshot 'none' on this node\n"
    assert ctl("snapshot", "no-vm")[2] == "nodectl: NOT_FOUND: no VM 'no-vm' on this node\n"
    with pytest.raises(SystemExit) as ei:
        main(["restore", "cn-1"])     # --id is required
    assert ei.value.code == 2

    assert ctl("snapshot", "rm", "cn-1") == (0, "cn-1: deleted\n", "")
    assert ctl("snapshot", "rm", "cn-1")[0] == 1
    assert "cn-1" not in ctl("snapshots")[1]
    for vm_id in ("cn-dst", "cn-p", "cn-src"):
        assert ctl("rm", "-f", vm_id)[0] == 0


NODE_SCRIPT = """
const { NodeClient } = require(process.argv[1] + '/client');
(async () => {
  const node = new NodeClient(process.argv[2]);
  const { snapshots } = await node.call('ListSnapshots', { source_vm: 'cj-src' });
  let code = '';
  try { await node.call('RestoreVm', { snapshot_id: 'cj-none', vm_id: 'cj-x' }); }
  catch (e) { code = e.codeName; }
  console.log(JSON.stringify({ ids: snapshots.map((s) => s.id),
                               size: snapshots.length ? snapshots[0].memory_bytes : null,
                               code }));
  node.close();
})().catch((e) => { console.error(e.message); process.exit(1); });
"""


def test_node_js_client_sees_the_snapshot_rpcs_from_the_proto(client, shared_server, guest):
    """clients/node loads proto/ at run time: the new RPCs need no regenerated code."""
    import shutil
    import subprocess
    from tests.clients.test_node_client import NODE_DIR
    if not shutil.which("node") or not (NODE_DIR / "node_modules").exists():
        pytest.fail("node or clients/node dependencies missing: run `make setup`")
    client.create_vm("cj-src", counter(guest), start=True)
    client.create_snapshot("cj-src", "cj-1")
    r = subprocess.run(["node", "-e", NODE_SCRIPT, str(NODE_DIR),
                        "unix://" + shared_server.socket], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"ids": ["cj-1"], "size": str(32 << 20), "code": "NOT_FOUND"}
    client.delete_snapshot("cj-1")
    drop(client, "cj-src")
