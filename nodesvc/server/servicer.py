"""NodeService servicer: unpack the request, call the core, pack the answer. No logic here;
domain errors become status codes in errors.DomainErrorInterceptor."""

from __future__ import annotations

import asyncio

from ..api.v1 import nodesvc_pb2 as pb
from ..api.v1 import nodesvc_pb2_grpc as pb_grpc
from ..core import InvalidSpec, Node, Unsupported
from . import convert as cv


def _budget(context) -> float | None:
    return context.time_remaining()     # None without a deadline


class NodeServicer(pb_grpc.NodeServiceServicer):
    def __init__(self, node: Node):
        self.node = node

    # -- lifecycle --------------------------------------------------------------------------
    async def CreateVm(self, req, context):
        rec = await self.node.create_vm(req.vm_id, cv.spec_from_proto(req), dict(req.labels),
                                        start=req.start)
        return pb.CreateVmResponse(vm=cv.vm_to_proto(rec))

    async def StartVm(self, req, context):
        return pb.StartVmResponse(vm=cv.vm_to_proto(await self.node.start_vm(req.vm_id)))

    async def StopVm(self, req, context):
        grace = None
        if req.HasField("grace_period"):
            grace = req.grace_period.ToTimedelta().total_seconds()
            if grace < 0:
                raise InvalidSpec("grace_period", f"must not be negative, got {grace:g}s")
        rec = await self.node.stop_vm(req.vm_id, grace, req.force, budget_s=_budget(context))
        return pb.StopVmResponse(vm=cv.vm_to_proto(rec))

    async def PauseVm(self, req, context):
        return pb.PauseVmResponse(vm=cv.vm_to_proto(await self.node.pause_vm(req.vm_id)))

    async def ResumeVm(self, req, context):
        return pb.ResumeVmResponse(vm=cv.vm_to_proto(await self.node.resume_vm(req.vm_id)))

    async def DeleteVm(self, req, context):
        await self.node.delete_vm(req.vm_id)
        return pb.DeleteVmResponse()

    async def GetVm(self, req, context):
        return pb.GetVmResponse(vm=cv.vm_to_proto(self.node.get_vm(req.vm_id)))

    async def ListVms(self, req, context):
        states = []
        for s in req.states:
            if cv.state_from_proto(s) is None:
                raise InvalidSpec("states", "VM_STATE_UNSPECIFIED is not a state to filter on")
            states.append(cv.state_from_proto(s))
        recs, revision = self.node.list_vms(dict(req.label_selector), states)
        return pb.ListVmsResponse(vms=[cv.vm_to_proto(r) for r in recs], revision=revision)

    async def WatchVms(self, req, context):
        since = req.since_revision if req.HasField("since_revision") else None
        async for ev in self.node.watch(since, dict(req.label_selector), req.vm_id):
            yield cv.event_to_proto(ev)

    # -- live device changes -------------------------------------------------------------------
    async def UpdateDrive(self, req, context):
        rec = await self.node.update_drive(req.vm_id, req.drive_id, req.path_on_host)
        return pb.UpdateDriveResponse(vm=cv.vm_to_proto(rec))

    async def UpdateRateLimiter(self, req, context):
        rec = await self.node.update_rate_limiter(req.vm_id, req.device_id,
                                                  cv.limiter_from_proto(req))
        return pb.UpdateRateLimiterResponse(vm=cv.vm_to_proto(rec))

    # -- console and logs ----------------------------------------------------------------------
    async def StreamConsole(self, req, context):
        async for data, dropped in self.node.console_stream(req.vm_id, req.include_history):
            yield pb.ConsoleOutput(data=data, dropped_bytes=dropped)

    async def AttachConsole(self, request_iterator, context):
        first = await anext(request_iterator.__aiter__(), None)
        if first is None:
            return
        vm_id = first.vm_id
        self.node.entry(vm_id)     # NOT_FOUND before anything else

        async def pump():
            if first.data:
                await self.node.console_input(vm_id, first.data)
            async for msg in request_iterator:
                if msg.data:
                    await self.node.console_input(vm_id, msg.data)

        async for data, dropped in _until_failed(
                self.node.console_stream(vm_id, first.include_history), pump()):
            yield pb.ConsoleOutput(data=data, dropped_bytes=dropped)

    async def StreamLogs(self, req, context):
        kinds = {k for k, on in (("log", req.logs), ("metrics", req.metrics)) if on}
        kinds = frozenset(kinds or {"log", "metrics"})
        async for records, dropped in self.node.logs_stream(req.vm_id, req.include_history,
                                                            kinds):
            if not records:
                yield pb.LogEntry(dropped=dropped)
            for i, rec in enumerate(records):
                entry = cv.log_entry(rec)
                if i == 0:
                    entry.dropped = dropped
                yield entry

    # -- snapshots (docs/snapshots.md) ---------------------------------------------------------
    async def CreateSnapshot(self, req, context):
        if req.snapshot_type == pb.SNAPSHOT_TYPE_DIFF:
            raise Unsupported("snapshot_type: diff snapshots are not implemented; take a "
                              "full snapshot")
        if req.snapshot_type not in (pb.SNAPSHOT_TYPE_UNSPECIFIED, pb.SNAPSHOT_TYPE_FULL):
            raise InvalidSpec("snapshot_type", f"unknown value {req.snapshot_type}")
        meta = await self.node.create_snapshot(req.vm_id, req.snapshot_id or None,
                                               resume=req.resume, pause=req.pause)
        return pb.CreateSnapshotResponse(snapshot=cv.snapshot_to_proto(meta),
                                         vm=cv.vm_to_proto(self.node.get_vm(req.vm_id)))

    async def ListSnapshots(self, req, context):
        metas = self.node.list_snapshots(req.source_vm or None)
        return pb.ListSnapshotsResponse(snapshots=[cv.snapshot_to_proto(m) for m in metas])

    async def GetSnapshot(self, req, context):
        meta = self.node.get_snapshot(req.snapshot_id)
        return pb.GetSnapshotResponse(snapshot=cv.snapshot_to_proto(meta))

    async def DeleteSnapshot(self, req, context):
        self.node.delete_snapshot(req.snapshot_id)
        return pb.DeleteSnapshotResponse()

    async def RestoreVm(self, req, context):
        rec = await self.node.restore_vm(req.snapshot_id, req.vm_id,
                                         overrides=cv.restore_overrides(req),
                                         labels=dict(req.labels) or None,
                                         resume=req.resume_vm)
        return pb.RestoreVmResponse(vm=cv.vm_to_proto(rec))

    # -- metadata and node ---------------------------------------------------------------------
    async def PutMetadata(self, req, context):
        return pb.MetadataResponse(json=await self.node.put_metadata(req.vm_id, req.json))

    async def PatchMetadata(self, req, context):
        return pb.MetadataResponse(json=await self.node.patch_metadata(req.vm_id, req.json))

    async def GetMetadata(self, req, context):
        return pb.MetadataResponse(json=self.node.get_metadata(req.vm_id))

    async def GetNodeInfo(self, req, context):
        return cv.node_info(self.node.node_info())


async def _until_failed(stream, side):
    """Items of `stream`, while `side` runs beside it; if `side` fails, raise its error.
    (Console input errors, e.g. the VM stopped, end an attach session.)"""
    side_task = asyncio.ensure_future(side)
    it = stream.__aiter__()
    nxt = None
    try:
        while True:
            nxt = asyncio.ensure_future(it.__anext__())
            while not nxt.done():
                waiting = {nxt} if side_task.done() else {nxt, side_task}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if side_task.done() and not side_task.cancelled() and side_task.exception():
                    raise side_task.exception()
            try:
                item = nxt.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        side_task.cancel()
        if nxt is not None and not nxt.done():
            nxt.cancel()
            await asyncio.wait([nxt])
        await it.aclose()
