"""AsyncNodeClient (grpc.aio) against a real node service: each call shape (unary, server
stream, bidirectional stream), happy path and errors. Each test runs its own event loop."""

import asyncio

import grpc
import pytest

from nodesvc_client import AsyncNodeClient, NodeError, SpecError, VmList, pb
from tests.clients.conftest import spec_dict

ST = pb.VmState
C = grpc.StatusCode


def run(coro_fn, target):
    async def main():
        async with AsyncNodeClient(target, timeout=30) as node:
            return await coro_fn(node)
    return asyncio.run(main())


async def code_of(awaitable) -> C:
    with pytest.raises(NodeError) as ei:
        await awaitable
    return ei.value.code


async def first(stream):
    async for item in stream:
        return item


def test_unary_calls_and_errors(target, guest):
    kernel = guest("hello")

    async def body(node):
        assert await node.health() == "SERVING"
        await node.wait_ready(5)
        assert (await node.node_info()).versions["api"] == "nodesvc.v1"
        vm = await node.create_vm("a-created", spec_dict(kernel), labels={"suite": "aio"})
        assert vm.state == ST.VM_STATE_CREATED
        assert await code_of(node.create_vm("a-created", spec_dict(kernel))) == \
            C.ALREADY_EXISTS
        assert (await node.get_vm("a-created")).labels == {"suite": "aio"}
        vms = await node.list_vms({"suite": "aio"}, state="created")
        assert isinstance(vms, VmList) and [v.id for v in vms] == ["a-created"]
        assert await code_of(node.start_vm("no-such-vm")) == C.NOT_FOUND
        assert await code_of(node.pause_vm("a-created")) == C.FAILED_PRECONDITION
        assert await code_of(node.resume_vm("a-created")) == C.FAILED_PRECONDITION
        assert await code_of(node.stop_vm("a-created", force=True)) == C.FAILED_PRECONDITION
        assert await node.put_metadata("a-created", {"k": [1]}) == {"k": [1]}
        assert await node.patch_metadata("a-created", {"j": True}) == {"k": [1], "j": True}
        assert await node.get_metadata("a-created") == {"k": [1], "j": True}
        assert await code_of(node.put_metadata("a-created", "nope")) == C.INVALID_ARGUMENT
        assert await code_of(node.update_drive("a-created", "d", kernel)) == C.NOT_FOUND
        assert await code_of(node.update_rate_limiter("a-created", "d", None)) == C.NOT_FOUND
        with pytest.raises(SpecError, match="spec.boot.kernel: unknown key"):
            await node.create_vm("a-x", {"boot": {"kernel": kernel}})
        await node.delete_vm("a-created")
        assert await code_of(node.delete_vm("a-created")) == C.NOT_FOUND
    run(body, target)


def test_stream_errors(target):
    async def body(node):
        assert await code_of(first(node.stream_console("no-such-vm"))) == C.NOT_FOUND
        assert await code_of(first(node.stream_logs("no-such-vm"))) == C.NOT_FOUND
        assert await code_of(first(node.attach_console("no-such-vm"))) == C.NOT_FOUND
        rev = (await node.list_vms()).revision
        assert await code_of(first(node.watch_vms(rev + 1000))) == C.OUT_OF_RANGE
    run(body, target)


async def read_until(stream, marker: bytes, timeout: float = 15.0) -> bytes:
    buf = b""

    async def read():
        nonlocal buf
        async for data in stream:
            buf += data
            if marker in buf:
                return
    await asyncio.wait_for(read(), timeout)
    return buf


@pytest.mark.kvm
def test_lifecycle_console_logs_and_watch(target, guest):
    kernel = guest("echo")

    async def typed():          # keystrokes from an async source, after a pause
        await asyncio.sleep(0.1)
        yield b"xy"
        yield b"z"

    async def body(node):
        rev = (await node.list_vms()).revision
        events = node.watch_vms(rev, vm_id="a-echo")
        vm = await node.create_vm("a-echo", spec_dict(kernel), start=True)
        assert vm.state == ST.VM_STATE_RUNNING
        async with node.stream_console("a-echo", include_history=True) as console:
            assert b"READY" in await read_until(console, b"READY")
            async with node.attach_console("a-echo", typed()) as attach:
                assert b"xyz" in await read_until(attach, b"xyz")
            assert b"xyz" in await read_until(console, b"xyz")
        async with node.stream_logs("a-echo", include_history=True, metrics=False) as logs:
            entry = await asyncio.wait_for(first(logs), 10)
            assert entry.HasField("log") and entry.log.fields["vm_id"] == "a-echo"
        assert (await node.pause_vm("a-echo")).state == ST.VM_STATE_PAUSED
        assert (await node.resume_vm("a-echo")).state == ST.VM_STATE_RUNNING
        vm = await node.stop_vm("a-echo", grace=0.2)
        assert vm.state == ST.VM_STATE_STOPPED
        await node.delete_vm("a-echo")
        seen = []
        async for ev in events:
            seen.append(ev)
            if ev.type == pb.VmEvent.TYPE_DELETED:
                break
        events.cancel()
        assert [e async for e in events] == []      # a cancelled stream just ends
        assert [first_word(e) for e in seen] == ["CREATED", "STARTING", "RUNNING", "PAUSED",
                                                 "RUNNING", "STOPPING", "STOPPED", "DELETED"]
    run(body, target)


def first_word(ev) -> str:
    if ev.type == pb.VmEvent.TYPE_DELETED:
        return "DELETED"
    return ST.Name(ev.vm.state).removeprefix("VM_STATE_")
