"""The node drives real VMM processes with typed actions (nodesvc.vmm.actions): the VMM's
hello says what it implements, results and errors come back typed, live device updates
reach the device the id names, and a bug inside an action is never "bad arguments".

The node runs in this process (so the tests can hold its VMM handles); the VMMs are real
processes running tiny guests. Some VMMs are started through `NodeConfig.command` with one
thing changed (a handler that raises, an action removed, a protocol-1 hello) to check how
the node copes with such a VMM.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from contextlib import asynccontextmanager

import pytest

from nodesvc.core import Node, NodeConfig, NotFound, Unsupported
from nodesvc.core.errors import VmmInternalError
from nodesvc.core.supervisor import vmm_command
from nodesvc.server.convert import to_dict
from nodesvc.server.errors import status_for
from nodesvc.vmm import actions as A
from nodesvc.vmm import control
from tests.service.conftest import vm_spec

pytestmark = pytest.mark.kvm
LIMITER = {"bandwidth": {"size": 1 << 20, "refill_time_ms": 100}}
FC_LIMITER = {"bandwidth": {"size": 1 << 20, "refill_time": 100}}
PLANNED: set = set()


def patched_vmm(patch: str):
    """A NodeConfig.command running the real VMM process after `patch` (Python source,
    with `P` = nodesvc.vmm.process and `A` = nodesvc.vmm.actions)."""
    src = ("import sys\nfrom nodesvc.vmm import actions as A, process as P\n" + patch +
           "\nsys.exit(P.main(sys.argv[1:]))\n")

    def command(vm_id, paths):
        argv = vmm_command(vm_id, paths, metrics_interval=0)
        assert argv[1:3] == ["-m", "nodesvc.vmm.process"]
        return [sys.executable, "-c", src, *argv[3:]]
    return command


@asynccontextmanager
async def node(state_dir: str, **cfg):
    n = Node(NodeConfig(state_dir=state_dir, vmm_metrics_interval_s=0, **cfg))
    await n.open()
    try:
        yield n
    finally:
        for vm_id, e in list(n.vms.items()):
            if e.handle is not None:
                await n.stop_vm(vm_id, force=True)
        await n.close()


def echo_spec(guest, tmp_path=None, **extra) -> dict:
    spec = to_dict(vm_spec(guest("echo")))
    if tmp_path is not None:
        disk = tmp_path / "data.img"
        disk.write_bytes(bytes(1 << 20))
        spec["drives"] = [{"drive_id": "data", "path_on_host": str(disk)}]
    spec.update(extra)
    return spec


def raw_hello(run_dir: str) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(os.path.join(run_dir, "control.sock"))
        return json.loads(s.makefile("rb").readline())


def test_typed_actions_against_a_real_vmm(state_dir, guest, tmp_path):
    async def scenario():
        async with node(state_dir) as n:
            await n.create_vm("typed", echo_spec(guest, tmp_path, entropy={}), start=True)
            h = n.vms["typed"].handle
            # The hello lists what this VMM implements, nothing merely declared.
            hello = raw_hello(h.paths.run_dir)
            assert hello["protocol"] == control.PROTOCOL == 2
            assert set(hello["actions"]) == h.actions
            assert A.PROTOCOL_1_ACTIONS <= h.actions and not PLANNED & h.actions
            assert h.supports(A.UpdateRateLimiter) and h.supports(A.PutMetadata)

            st = await h.call(A.Status())
            assert isinstance(st, A.StatusResult)
            assert (st.vm_id, st.pid, st.state) == ("typed", h.pid, "running")
            assert await n.console_input("typed", b"hi") == 2
            assert await h.call(A.ConsoleInput(b"k")) == A.ConsoleInputResult(accepted=1)
            assert await h.call(A.FlushMetrics()) == A.Done()

            await n.pause_vm("typed")
            assert (await h.call(A.Status())).state == "paused"
            with pytest.raises(A.WrongState, match="VM is paused, needs running"):
                await h.call(A.Pause())
            await n.resume_vm("typed")

            # A snapshot needs a paused VM (Firecracker's rule), checked by the VMM.
            with pytest.raises(A.WrongState, match="needs paused"):
                await h.call(A.CreateSnapshot("/s", "/m"))
            assert await h.call(A.PutMetadata({"a": 1})) == A.Done()   # issue 10
            assert await n.put_metadata("typed", '{"a": 1}') == '{"a":1}'

            # Every device id the node accepts reaches its device; unknown ones are named.
            for device_id in ("data", "entropy"):
                rec = await n.update_rate_limiter("typed", device_id, LIMITER)
                assert rec.state.value == "RUNNING"
            assert rec.spec["entropy"]["rate_limiter"]["bandwidth"]["size"] == 1 << 20
            for device_id, name in (("nope", "'nope'"), ("eth9/rx", "'eth9'")):
                with pytest.raises(A.NotFound, match=name):
                    await h.call(A.UpdateRateLimiter(device_id, FC_LIMITER))
            with pytest.raises(A.NotFound, match="drive 'other'"):
                await h.call(A.UpdateDrive("other", str(tmp_path / "data.img")))

            assert await h.call(A.CtrlAltDel()) == A.CtrlAltDelResult(sent=True)
    asyncio.run(scenario())


def test_a_type_error_inside_an_action_is_internal_not_bad_arguments(state_dir, guest):
    # The message a wrong call signature would produce: the old dispatcher reported any
    # TypeError as "bad arguments" (INVALID_ARGUMENT), blaming the caller for a VMM bug.
    bug = patched_vmm(
        "def console_input(self, a):\n"
        "    raise TypeError(\"console_input() got an unexpected keyword argument 'data'\")\n"
        "P.VmmProcess.console_input = console_input\n")

    async def scenario():
        async with node(state_dir, command=bug, no_jail=True) as n:
            await n.create_vm("buggy", echo_spec(guest), start=True)
            h = n.vms["buggy"].handle
            with pytest.raises(A.Internal) as ei:
                await h.call(A.ConsoleInput(b"x"))
            assert ei.value.kind == "internal" and "TypeError" in str(ei.value)
            assert "bad arguments" not in str(ei.value)
            with pytest.raises(VmmInternalError) as ei:
                await n.console_input("buggy", b"x")
            assert status_for(ei.value)[0].name == "INTERNAL"
            # The VMM survived its bug and still answers.
            assert (await h.call(A.Status())).state == "running"
    asyncio.run(scenario())


def test_support_is_what_the_hello_lists(state_dir, guest, tmp_path):
    no_drive_updates = patched_vmm(
        "init = P.VmmProcess.__init__\n"
        "def __init__(self, *args, **kw):\n"
        "    init(self, *args, **kw)\n"
        "    del self.handlers[A.UpdateDrive]\n"
        "P.VmmProcess.__init__ = __init__\n")
    other = tmp_path / "other.img"
    other.write_bytes(bytes(1 << 20))

    async def scenario():
        async with node(state_dir, command=no_drive_updates, no_jail=True) as n:
            await n.create_vm("partial", echo_spec(guest, tmp_path), start=True)
            h = n.vms["partial"].handle
            assert not h.supports(A.UpdateDrive) and h.supports(A.UpdateRateLimiter)
            with pytest.raises(Unsupported, match="not supported by this VMM yet"):
                await n.update_drive("partial", "data", str(other))
            assert n.get_vm("partial").spec["drives"][0]["path_on_host"] != str(other)
            await n.update_rate_limiter("partial", "data", LIMITER)    # the rest works
    asyncio.run(scenario())


def test_a_protocol_1_vmm_is_still_driven(state_dir, guest, tmp_path):
    # A VMM that outlived a node upgrade says hello without an action list.
    old_hello = patched_vmm(
        "send = P.VmmProcess._send\n"
        "def _send(self, c, msg):\n"
        "    if msg.get('event') == 'hello':\n"
        "        msg = {k: v for k, v in msg.items() if k != 'actions'} | {'protocol': 1}\n"
        "    send(self, c, msg)\n"
        "P.VmmProcess._send = _send\n")
    other = tmp_path / "other.img"
    other.write_bytes(bytes(1 << 20))

    async def scenario():
        async with node(state_dir, command=old_hello, no_jail=True) as n:
            await n.create_vm("old", echo_spec(guest, tmp_path), start=True)
            assert n.vms["old"].handle.actions == A.PROTOCOL_1_ACTIONS
            rec = await n.update_drive("old", "data", str(other))
            assert rec.spec["drives"][0]["path_on_host"] == str(other)
    asyncio.run(scenario())


def test_net_rx_and_tx_limiters_reach_the_interface(state_dir, guest):
    from nodesvc.net.netns import NetNamespace
    try:
        ns = NetNamespace("nsvcact")
    except OSError as e:
        pytest.skip(f"cannot create a network namespace here: {e}")
    try:
        ns.create_tap("tap0")
        spec = echo_spec(guest, network_interfaces=[
            {"iface_id": "eth0", "host_dev_name": "tap0", "netns": ns.name}])

        async def scenario():
            async with node(state_dir) as n:
                await n.create_vm("net", spec, start=True)
                for which in ("rx", "tx"):
                    rec = await n.update_rate_limiter("net", f"eth0/{which}", LIMITER)
                    iface = rec.spec["network_interfaces"][0]
                    assert iface[f"{which}_rate_limiter"]["bandwidth"]["size"] == 1 << 20
                with pytest.raises(NotFound, match="eth1"):   # the node knows its spec
                    await n.update_rate_limiter("net", "eth1/rx", LIMITER)
        asyncio.run(scenario())
    finally:
        ns.close()
