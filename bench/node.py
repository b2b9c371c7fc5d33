"""Node service figures, each beside a baseline measured in the same run (method and
figures: docs/benchmarks.md, "Node service").

    python bench/node.py [-n 20] [--vms 20] [--rss-vms 50] [--clients 100] [--subscribers 10]

CreateVm+StartVm → first guest instruction (and where the time goes), microVMs created and
started per second and per CPU-second, GetVm p50/p99 with 100 concurrent clients (tracing
off and on), console stream throughput to 10 subscribers, node service RSS with 0 and 50
VMs. Hosts are noisy: read medians and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from nodesvc.api.v1 import nodesvc_pb2 as pb  # noqa: E402
from nodesvc.api.v1 import nodesvc_pb2_grpc as pb_grpc  # noqa: E402
from tests.guests.build import build_guest  # noqa: E402

ACTIVE = (pb.VmState.VM_STATE_STARTING, pb.VmState.VM_STATE_RUNNING)


def pct(xs: list[float], p: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def ms(x: float) -> str:
    return f"{x * 1e3:.1f} ms"


def cpu_s(pid: int) -> float:
    """CPU seconds of a process and of the children it reaped (its VMMs)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


def spec(kernel: str, boot_args: str, memory_mib: int = 32) -> pb.VmSpec:
    return pb.VmSpec(machine=pb.MachineConfig(vcpus=1, memory_mib=memory_mib),
                     boot=pb.BootSource(kernel_path=kernel, boot_args=boot_args))


class Server:
    """`nodesvc serve` in a subprocess on its own state dir; kills its VMMs at the end."""

    def __init__(self, *extra: str):
        self.dir = tempfile.mkdtemp(prefix="nbench-", dir="/tmp")
        self.sock = os.path.join(self.dir, "s.sock")
        cmd = [sys.executable, "-m", "nodesvc.server.main", "serve", "--state-dir", self.dir,
               "--socket", self.sock, "--log-level", "warning", "--vmm-metrics-interval", "0",
               "--cpu-overcommit", "100", *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "server.log"), "wb"))

    async def channel(self) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(f"unix:{self.sock}")
        await asyncio.wait_for(ch.channel_ready(), 30)
        return ch

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)
        marker = os.fsencode(os.path.join(self.dir, "run") + "/")
        for d in filter(str.isdigit, os.listdir("/proc")):
            try:
                if marker in Path(f"/proc/{d}/cmdline").read_bytes():
                    os.kill(int(d), signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


async def control_status(run_dir: str) -> dict:
    r, w = await asyncio.open_unix_connection(os.path.join(run_dir, "control.sock"))
    await r.readline()
    w.write(b'{"id":1,"op":"status"}\n')
    msg = json.loads(await r.readline())
    w.close()
    return msg["result"]


# -- 1. latency to the first guest instruction ---------------------------------------------
async def start_latency(srv: Server, stub, echo: str, n: int) -> dict:
    total, rpc, phases = [], [], {}
    for i in range(n + 1):      # the first run warms the node service up: not counted
        vm_id = f"lat-{i}"
        t0 = time.time_ns()
        await stub.CreateVm(pb.CreateVmRequest(vm_id=vm_id, spec=spec(echo, "idle=60000")))
        await stub.StartVm(pb.StartVmRequest(vm_id=vm_id), timeout=60)
        t_rpc = time.time_ns()
        st = await control_status(os.path.join(srv.dir, "run", vm_id))
        await stub.StopVm(pb.StopVmRequest(vm_id=vm_id, force=True), timeout=20)
        await stub.DeleteVm(pb.DeleteVmRequest(vm_id=vm_id))
        if i == 0:
            continue
        tl = {s["name"]: s for s in st["timeline"]}
        total.append((tl["vmm.first_run"]["end_ns"] - t0) / 1e9)
        rpc.append((t_rpc - t0) / 1e9)
        tl["vmm.spawn"]["start_ns"] = t0     # to the VMM's main(), from our CreateVm
        for name, s in tl.items():
            phases.setdefault(name, []).append((s["end_ns"] - s["start_ns"]) / 1e9)
    return {"first_insn": total, "rpc": rpc,
            "phases": {k: statistics.median(v) for k, v in phases.items()}}


def inprocess(kernel: str, boot_args: str = "") -> tuple[float, float, float]:
    """A bare MicroVm run to its end (imports done): (build → first KVM_RUN, CPU seconds,
    console bytes per second)."""
    from nodesvc.vmm.config import config_from_flags
    from nodesvc.vmm.vm import MicroVm
    c0, t0, sink = time.process_time(), time.monotonic(), io.BytesIO()
    vm = MicroVm(config_from_flags(kernel=kernel, vcpus=1, mem_mib=32, boot_args=boot_args),
                 vm_id="b", console_out=sink)
    vm.run(timeout=600)
    first = vm.created_at + vm.stats()["first_run_after"] - t0
    return first, time.process_time() - c0, sink.tell() / (vm.ended_at - vm.started_at)


def spawn_pass() -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.monotonic() - t0


# -- 2. creates per second -------------------------------------------------------------------
async def create_rate(srv: Server, stub, hello: str, n: int) -> dict:
    cpu0 = cpu_s(srv.proc.pid)
    t0 = time.monotonic()
    await asyncio.gather(*(stub.CreateVm(pb.CreateVmRequest(
        vm_id=f"rate-{i}", spec=spec(hello, ""), start=True), timeout=120) for i in range(n)))
    wall = time.monotonic() - t0
    while True:     # every hello VM resets by itself; wait until its VMM is reaped
        if not any(v.state in ACTIVE for v in (await stub.ListVms(pb.ListVmsRequest())).vms):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    cpu = cpu_s(srv.proc.pid) - cpu0
    for i in range(n):
        await stub.DeleteVm(pb.DeleteVmRequest(vm_id=f"rate-{i}"))
    return {"wall": wall, "cpu": cpu, "n": n}


# -- 3. GetVm under concurrency --------------------------------------------------------------
async def getvm_latency(srv: Server, kernel: str, clients: int, per_client: int) -> dict:
    chans = [await srv.channel() for _ in range(clients)]
    stubs = [pb_grpc.NodeServiceStub(c) for c in chans]
    await stubs[0].CreateVm(pb.CreateVmRequest(vm_id="get", spec=spec(kernel, "")))
    lat: list[float] = []

    async def client(stub):
        for _ in range(per_client):
            t0 = time.perf_counter()
            await stub.GetVm(pb.GetVmRequest(vm_id="get"))
            lat.append(time.perf_counter() - t0)
    for s in stubs:                     # warm every connection
        await s.GetVm(pb.GetVmRequest(vm_id="get"))
    t0, c0 = time.perf_counter(), cpu_s(srv.proc.pid)
    await asyncio.gather(*(client(s) for s in stubs))
    wall, cpu = time.perf_counter() - t0, cpu_s(srv.proc.pid) - c0
    await stubs[0].DeleteVm(pb.DeleteVmRequest(vm_id="get"))
    for c in chans:
        await c.close()
    return {"p50": pct(lat, 50), "p99": pct(lat, 99), "rps": len(lat) / wall,
            "cpu_us": cpu / len(lat) * 1e6}     # node service CPU per request


# -- 4. console fan-out ----------------------------------------------------------------------
async def console_fanout(srv: Server, ioloop: str, subscribers: int, count: int) -> dict:
    chans = [await srv.channel() for _ in range(subscribers)]
    stub = pb_grpc.NodeServiceStub(chans[0])
    vm_id = f"console-{subscribers}"
    await stub.CreateVm(pb.CreateVmRequest(vm_id=vm_id, spec=spec(
        ioloop, f"count={count} port=0x3f8")))
    got = [[0, 0, 0.0, 0.0] for _ in chans]      # bytes, dropped, first and last byte at

    async def sub(ch, acc):
        async for msg in pb_grpc.NodeServiceStub(ch).StreamConsole(
                pb.StreamConsoleRequest(vm_id=vm_id, include_history=True)):
            acc[0] += len(msg.data)
            acc[1] += msg.dropped_bytes
            acc[2], acc[3] = acc[2] or time.monotonic(), time.monotonic()
    tasks = [asyncio.create_task(sub(c, a)) for c, a in zip(chans, got)]
    await asyncio.sleep(0.3)            # every subscriber attached
    await stub.StartVm(pb.StartVmRequest(vm_id=vm_id), timeout=60)
    await asyncio.wait_for(asyncio.gather(*tasks), 600)
    t0 = min(g[2] for g in got)         # the guest's first byte: start-up is not streaming
    rates = [b / (t - t0) for b, _, _, t in got]
    await stub.DeleteVm(pb.DeleteVmRequest(vm_id=vm_id))
    for c in chans:
        await c.close()
    return {"per_sub": statistics.median(rates), "total": sum(rates),
            "bytes": min(g[0] for g in got), "dropped": sum(g[1] for g in got)}


# -- 5. RSS ----------------------------------------------------------------------------------
async def rss_with_vms(srv: Server, stub, echo: str, n: int) -> float:
    for i in range(n):
        await stub.CreateVm(pb.CreateVmRequest(vm_id=f"rss-{i}", spec=spec(
            echo, "idle=600000", memory_mib=16), start=True), timeout=120)
        await stub.PauseVm(pb.PauseVmRequest(vm_id=f"rss-{i}"))
    await asyncio.sleep(1.0)
    return rss_mib(srv.proc.pid)     # the VMs go when the server's state dir is removed


async def node_figures(a, g) -> dict:
    f: dict = {}
    srv = Server()
    try:
        ch = await srv.channel()
        stub = pb_grpc.NodeServiceStub(ch)
        await asyncio.sleep(0.5)
        f["rss0"] = rss_mib(srv.proc.pid)
        f["lat"] = await start_latency(srv, stub, g["echo"], a.n)
        f["rate"] = await create_rate(srv, stub, g["hello"], a.vms)
        f["get1"] = await getvm_latency(srv, g["echo"], 1, 2000)
        f["getN"] = await getvm_latency(srv, g["echo"], a.clients, 100)
        f["con1"] = await console_fanout(srv, g["ioloop"], 1, a.console_bytes)
        f["conN"] = await console_fanout(srv, g["ioloop"], a.subscribers, a.console_bytes)
        f["rss_n"] = await rss_with_vms(srv, stub, g["echo"], a.rss_vms)
        await ch.close()
    finally:
        srv.close()
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    port = sink.stdout.readline().strip()   # empty: no OTLP package; console to /dev/null
    srv = Server(*(["--otlp-endpoint", f"http://127.0.0.1:{port}"] if port else
                   ["--trace-exporter", "console"]))
    try:
        f["get1_traced"] = await getvm_latency(srv, g["echo"], 1, 2000)
        f["getN_traced"] = await getvm_latency(srv, g["echo"], a.clients, 100)
    finally:
        srv.close()
        sink.kill()
    return f


# An OTLP collector that takes spans and drops them (needs the OTLP exporter package).
SINK = """
import grpc, concurrent.futures as cf
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as m, trace_service_pb2_grpc as g
class Sink(g.TraceServiceServicer):
    Export = lambda self, request, context: m.ExportTraceServiceResponse()
s = grpc.server(cf.ThreadPoolExecutor(2)); g.add_TraceServiceServicer_to_server(Sink(), s)
print(s.add_insecure_port("127.0.0.1:0"), flush=True); s.start(); s.wait_for_termination()
"""


def report(a, f: dict, base: dict) -> str:
    lat, r = f["lat"], f["rate"]
    vm_per_cpu, base_per_cpu = r["n"] / r["cpu"], 1 / statistics.median(base["cpu"])
    ph = lat["phases"]
    order = [n for n in ("spawn", "config", "handshake", "imports", "plugins", "kvm", "memory",
                         "kernel", "devices", "boot_data", "vcpus", "first_run")
             if f"vmm.{n}" in ph]
    c1, cN = f["con1"], f["conN"]

    def lp(d: dict) -> str:
        return (f"{ms(d['p50'])} / {ms(d['p99'])} ({d['rps']:.0f} req/s, "
                f"{d['cpu_us']:.0f} µs server CPU each)")
    rows = [
        ("CreateVm+StartVm → first guest instruction (median / p99, n=%d)" % a.n,
         f"{ms(statistics.median(lat['first_insn']))} / {ms(pct(lat['first_insn'], 99))}",
         f"in-process MicroVm build → first KVM_RUN {ms(statistics.median(base['lat']))}; "
         f"`python -c pass` {ms(statistics.median(base['pass']))}"),
        ("… until the StartVm reply is back (median)", ms(statistics.median(lat["rpc"])), ""),
        (f"microVMs created+started, {r['n']} at once (hello guest)",
         f"{r['n'] / r['wall']:.2f}/s wall on {os.cpu_count()} CPUs; "
         f"{vm_per_cpu:.2f} per CPU-second ({r['cpu'] / r['n'] * 1e3:.0f} ms CPU each)",
         f"published design figure (Firecracker's 5/core/s, not measured in this run); "
         f"in-process MicroVm {base_per_cpu:.1f} "
         "per CPU-second"),
        (f"GetVm p50 / p99, {a.clients} concurrent clients", lp(f["getN"]),
         f"1 client: {lp(f['get1'])}"),
        ("… with tracing on (OTLP exporter, to a collector that drops the spans)",
         lp(f["getN_traced"]), f"1 client: {lp(f['get1_traced'])}"),
        (f"console stream, {a.subscribers} subscribers ({cN['bytes']} B each)",
         f"{cN['per_sub'] / 1e3:.1f} kB/s each, {cN['total'] / 1e3:.0f} kB/s total, "
         f"{cN['dropped']} B dropped",
         f"1 subscriber {c1['per_sub'] / 1e3:.1f} kB/s; same guest in-process "
         f"{base['console'] / 1e3:.1f} kB/s (guest-bound: one PIO exit per byte)"),
        ("node service RSS, 0 VMs → %d VMs" % a.rss_vms,
         f"{f['rss0']:.1f} MiB → {f['rss_n']:.1f} MiB",
         f"{(f['rss_n'] - f['rss0']) * 1024 / a.rss_vms:.0f} KiB per VM"),
    ]
    out = ["| figure | node service | baseline (same run) |", "|---|---|---|"]
    out += [f"| {a_} | {b_} | {c_} |" for a_, b_, c_ in rows]
    out += ["", "Where CreateVm+StartVm time goes (median; spawn counted from CreateVm):", "",
            "| " + " | ".join(order) + " |", "|" + "---|" * len(order),
            "| " + " | ".join(ms(ph[f"vmm.{n}"]) for n in order) + " |"]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=20, help="CreateVm+StartVm latency runs")
    p.add_argument("--vms", type=int, default=20, help="VMs for the creates/s figure")
    p.add_argument("--rss-vms", type=int, default=50)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--subscribers", type=int, default=10)
    p.add_argument("--console-bytes", type=int, default=50000)
    a = p.parse_args()
    g = {k: str(build_guest(k)) for k in ("echo", "hello", "ioloop")}
    runs = [inprocess(g["hello"]) for _ in range(a.n + 1)][1:]     # the first one warms up
    base = {"pass": [spawn_pass() for _ in range(a.n)], "lat": [r[0] for r in runs],
            "cpu": [r[1] for r in runs],
            "console": inprocess(g["ioloop"], f"count={a.console_bytes} port=0x3f8")[2]}
    f = asyncio.run(node_figures(a, g))
    print(f"nodesvc node service benchmark: {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d')}\n")
    print(report(a, f, base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
