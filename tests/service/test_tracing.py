"""OpenTelemetry: a span per RPC, and the VMM's phases as child spans of the RPC that
started the VM (the span tree of a create+start), with an in-memory exporter and the node
service in this process; the CLI's console and OTLP exporters in a real `nodesvc serve`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from contextlib import asynccontextmanager

import grpc
import pytest

from nodesvc import tracing
from nodesvc.api.v1 import nodesvc_pb2 as pb
from nodesvc.api.v1 import nodesvc_pb2_grpc as pb_grpc
from nodesvc.core import NodeConfig
from nodesvc.server.app import ServeOptions, serve

from tests.service.conftest import ROOT, vm_spec, jail_run_dir

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
MD = (("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01"),)
SLACK_NS = 2_000_000    # VMM and node service convert their clocks separately
# jailed (the default): the devices are planned before the jail closes, the rest inside
PHASES = ["vmm.spawn", "vmm.config", "vmm.plugins", "vmm.jail", "vmm.handshake", "vmm.imports",
          "vmm.kvm", "vmm.memory", "vmm.kernel", "vmm.devices", "vmm.boot_data", "vmm.vcpus",
          "vmm.first_run"]


@asynccontextmanager
async def traced_node(state_dir: str):
    t = tracing.Tracing.in_memory()
    sock, stop = os.path.join(state_dir, "s.sock"), asyncio.Event()
    task = asyncio.create_task(serve(NodeConfig(state_dir=state_dir, tracing=t),
                                     ServeOptions(socket=sock), stop=stop))
    try:
        async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
            await asyncio.wait_for(ch.channel_ready(), 20)
            yield pb_grpc.NodeServiceStub(ch), t.exporter
    finally:
        stop.set()
        await task
        t.shutdown()


def hexid(n: int, width: int = 16) -> str:
    return format(n, f"0{width}x")


def children(spans, parent) -> list:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def check_vmm_tree(spans, rpc) -> None:
    [start] = [s for s in children(spans, rpc) if s.name == "vmm.start"]
    kids = sorted(children(spans, start), key=lambda s: s.start_time)
    assert [s.name for s in kids] == PHASES
    assert rpc.start_time <= start.start_time <= start.end_time <= rpc.end_time
    prev_end = start.start_time
    for s in kids:
        assert s.context.trace_id == rpc.context.trace_id
        assert s.start_time >= prev_end - SLACK_NS, (s.name, s.start_time - prev_end)
        assert s.end_time <= start.end_time + SLACK_NS, s.name
        prev_end = s.end_time
    assert start.attributes["nodesvc.vmm_pid"] > 0
    assert start.attributes["nodesvc.vm_id"] == rpc.attributes["nodesvc.vm_id"]


@pytest.mark.kvm
def test_span_tree_of_create_and_start(state_dir, guest):
    async def scenario():
        async with traced_node(state_dir) as (stub, exporter):
            spec = vm_spec(guest("echo"))
            await stub.CreateVm(pb.CreateVmRequest(vm_id="t1", spec=spec), metadata=MD)
            await stub.StartVm(pb.StartVmRequest(vm_id="t1"), metadata=MD, timeout=60)
            await stub.CreateVm(pb.CreateVmRequest(vm_id="t2", spec=spec, start=True),
                                timeout=60)     # no caller context: a new trace
            logs = stub.StreamLogs(pb.StreamLogsRequest(vm_id="t1", include_history=True,
                                                        logs=True))
            async for entry in logs:
                if entry.log.message == "VM started":
                    assert entry.log.fields["trace_id"] == TRACE_ID
                    break
            logs.cancel()
            for vm_id in ("t1", "t2"):
                await stub.StopVm(pb.StopVmRequest(vm_id=vm_id, force=True), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetVm(pb.GetVmRequest(vm_id="nope"))
            await asyncio.sleep(0.2)    # the cancelled stream's handler ends its span
            return exporter.get_finished_spans()

    spans = asyncio.run(scenario())
    by_name = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    create1, create2 = by_name["nodesvc.v1.NodeService/CreateVm"]
    [start1] = by_name["nodesvc.v1.NodeService/StartVm"]
    for rpc in (create1, start1):   # the caller's trace, the caller's span as parent
        assert hexid(rpc.context.trace_id, 32) == TRACE_ID
        assert hexid(rpc.parent.span_id) == CALLER_SPAN and rpc.parent.is_remote
        assert rpc.kind.name == "SERVER"
    assert start1.attributes["rpc.grpc.status_code"] == 0
    assert start1.attributes["nodesvc.vm_id"] == "t1"
    assert start1.attributes["rpc.service"] == "nodesvc.v1.NodeService"
    assert start1.attributes["rpc.method"] == "StartVm"
    check_vmm_tree(spans, start1)
    assert create2.parent is None and hexid(create2.context.trace_id, 32) != TRACE_ID
    check_vmm_tree(spans, create2)
    [get] = by_name["nodesvc.v1.NodeService/GetVm"]
    assert get.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert get.status.status_code.name == "UNSET"   # the caller's mistake, not a fault
    [stream] = by_name["nodesvc.v1.NodeService/StreamLogs"]
    assert stream.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]


@pytest.mark.kvm
def test_vmm_process_stays_lean_when_traced(state_dir, guest):
    async def scenario():
        async with traced_node(state_dir) as (stub, _):
            vm = (await stub.CreateVm(pb.CreateVmRequest(vm_id="lean-t", spec=vm_spec(
                guest("echo")), start=True), metadata=MD, timeout=60)).vm
            status = await _control(jail_run_dir(state_dir, "lean-t"), "status")
            await stub.StopVm(pb.StopVmRequest(vm_id="lean-t", force=True), timeout=10)
            return vm, status

    vm, status = asyncio.run(scenario())
    assert status["heavy_modules"] == [], status["heavy_modules"]   # no opentelemetry
    assert status["trace_id"] == TRACE_ID
    assert {s["name"] for s in status["timeline"]} == set(PHASES)


async def _control(run_dir: str, op: str) -> dict:
    r, w = await asyncio.open_unix_connection(os.path.join(run_dir, "control.sock"))
    await r.readline()      # hello
    w.write(json.dumps({"id": 1, "op": op, "args": {}}).encode() + b"\n")
    msg = json.loads(await r.readline())
    w.close()
    assert msg["ok"], msg
    return msg["result"]


def test_console_exporter_prints_rpc_spans(make_server):
    srv = make_server("--trace-exporter", "console")
    with pytest.raises(grpc.RpcError):
        srv.stub.GetVm(pb.GetVmRequest(vm_id="ghost"), metadata=MD)
    assert srv.stop() == 0      # spans are batched; shutdown flushes them
    log = srv.log_text()
    assert '"name": "nodesvc.v1.NodeService/GetVm"' in log, log
    assert f'"trace_id": "0x{TRACE_ID}"' in log


@pytest.mark.kvm
def test_otlp_exporter_sends_the_span_tree(make_server, guest):
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as svc
    from concurrent import futures
    received = []

    class Collector(svc.TraceServiceServicer):
        def Export(self, request, context):
            received.append(request)
            from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
            return trace_service_pb2.ExportTraceServiceResponse()

    collector = grpc.server(futures.ThreadPoolExecutor(2))
    svc.add_TraceServiceServicer_to_server(Collector(), collector)
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    try:
        srv = make_server("--otlp-endpoint", f"http://127.0.0.1:{port}")
        srv.stub.CreateVm(pb.CreateVmRequest(vm_id="otlp", spec=vm_spec(guest("echo")),
                                             start=True), metadata=MD, timeout=60)
        srv.stub.StopVm(pb.StopVmRequest(vm_id="otlp", force=True), timeout=10)
        assert srv.stop() == 0
    finally:
        collector.stop(0)
    spans = [s for req in received for rs in req.resource_spans for ss in rs.scope_spans
             for s in ss.spans]
    names = {s.name for s in spans if s.trace_id.hex() == TRACE_ID}
    assert {"nodesvc.v1.NodeService/CreateVm", "vmm.start", *PHASES} <= names, names
    resource = {a.key: a.value.string_value for a in received[0].resource_spans[0]
                .resource.attributes}
    assert resource["service.name"] == "nodesvc"


def test_tracing_off_imports_no_opentelemetry():
    code = ("import sys; import nodesvc.server.main, nodesvc.server.app, nodesvc.core.node\n"
            "from nodesvc.server.app import interceptors\n"
            "assert [type(i).__name__ for i in interceptors(None)] == "
            "['DomainErrorInterceptor']\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bad_exporter_is_a_usage_error(state_dir):
    r = subprocess.run([sys.executable, "-m", "nodesvc.server.main", "serve", "--state-dir",
                        state_dir, "--trace-exporter", "jaeger"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--trace-exporter" in r.stderr
