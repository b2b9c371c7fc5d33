"""Node service figures, each beside a baseline measured in the same run (method and
figures: docs/benchmarks.md, "Node service").

    python bench/node.py [-n 20] [--vms 20] [--rss-vms 50] [--clients 100] [--subscribers 10]

Side by side, jailed VMMs (the default: forked by the zygote, then jailed), unjailed ones
(`--no-jail`: a fresh `python -m nodesvc.vmm.process` per VM) and the in-process `MicroVm`
build: CreateVm+StartVm → first guest instruction (and where the time goes, the jail
included), microVMs created and started per second and per CPU-second, an idle VMM's
memory (USS, PSS, RSS from /proc/<pid>/smaps_rollup) and the node service's RSS with 50
VMs. Then, on the jailed node: GetVm p50/p99 with 100 concurrent clients (tracing off and
on) and console stream throughput to 10 subscribers. Hosts are noisy: read medians and
ratios.
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
        self.jailed = "--no-jail" not in extra
        cmd = [sys.executable, "-m", "nodesvc.server.main", "serve", "--state-dir", self.dir,
               "--socket", self.sock, "--log-level", "warning", "--vmm-metrics-interval", "0",
               "--cpu-overcommit", "100", *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "server.log"), "wb"))

    async def channel(self) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(f"unix:{self.sock}")
        await asyncio.wait_for(ch.channel_ready(), 30)
        return ch

    def run_dir(self, vm_id: str) -> str:
        if self.jailed:     # inside the jail's root, where the VMM sees it as /run
            return os.path.join(self.dir, "jail", vm_id, "root", "run")
        return os.path.join(self.dir, "run", vm_id)

    def _procs(self, marker: bytes) -> list[int]:
        out = []
        for d in filter(str.isdigit, os.listdir("/proc")):
            try:
                if marker in Path(f"/proc/{d}/cmdline").read_bytes():
                    out.append(int(d))
            except OSError:
                pass
        return out

    def zygote(self) -> int | None:
        """The zygote's pid (jailed mode); its CPU is part of what a VM costs."""
        z = [p for p in self._procs(os.fsencode(os.path.join(self.dir, "zygote.sock")))
             if b"nodesvc.vmm.zygote" in Path(f"/proc/{p}/cmdline").read_bytes()]
        return min(z) if z else None

    def cpu(self) -> float:
        """CPU seconds of the node service, its reaped VMMs, and the zygote (jailed)."""
        z = self.zygote()
        return cpu_s(self.proc.pid) + (cpu_s(z) if z else 0.0)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)
        # unjailed VMMs name their run dir; jailed ones (and the zygote) the zygote socket
        for m in (os.path.join(self.dir, "run") + "/", os.path.join(self.dir, "zygote.sock")):
            for pid in self._procs(os.fsencode(m)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        if self.jailed:     # the jails of the VMMs just killed: cgroups, dirs, uid locks
            from nodesvc.core.launcher import JailConfig
            from nodesvc_jailer import sweep
            jails = os.path.join(self.dir, "jail")
            parent = JailConfig(jails).parent_cgroup
            time.sleep(0.2)     # the killed VMMs leave their cgroups once reaped
            sweep(jails, live=set(), uid_state_dir=os.path.join(jails, ".uids"),
                  parent_cgroup=parent)
            for m in ("memory", "cpu", "pids"):
                try:
                    os.rmdir(os.path.join("/sys/fs/cgroup", m, parent))
                except OSError:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)


def smaps_mib(pid: int) -> dict[str, float]:
    """USS (private clean + dirty), PSS and RSS of a process, in MiB."""
    kb = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        k, _, v = line.partition(":")
        kb[k] = int(v.split()[0])
    return {"uss": (kb["Private_Clean"] + kb["Private_Dirty"]) / 1024,
            "pss": kb["Pss"] / 1024, "rss": kb["Rss"] / 1024}


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
        st = await control_status(srv.run_dir(vm_id))
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
    cpu0 = srv.cpu()
    t0 = time.monotonic()
    await asyncio.gather(*(stub.CreateVm(pb.CreateVmRequest(
        vm_id=f"rate-{i}", spec=spec(hello, ""), start=True), timeout=120) for i in range(n)))
    wall = time.monotonic() - t0
    while True:     # every hello VM resets by itself; wait until its VMM is reaped
        if not any(v.state in ACTIVE for v in (await stub.ListVms(pb.ListVmsRequest())).vms):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    cpu = srv.cpu() - cpu0
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


# -- 5. memory ------------------------------------------------------------------------------
async def memory_with_vms(srv: Server, stub, idle: str, n: int) -> dict:
    """n idle VMs (the guest halts: no CPU): the node service's RSS, and each VMM's USS,
    PSS and RSS (median). The VMs go when the server's state dir is removed."""
    pids = []
    for i in range(n):
        vm = (await stub.CreateVm(pb.CreateVmRequest(vm_id=f"rss-{i}", spec=spec(
            idle, "", memory_mib=16), start=True), timeout=120)).vm
        pids.append(vm.vmm_pid)
    await asyncio.sleep(1.0)
    per = [smaps_mib(p) for p in pids]
    return {"node": rss_mib(srv.proc.pid),
            **{k: statistics.median(m[k] for m in per) for k in ("uss", "pss", "rss")}}


async def mode_figures(srv: Server, a, g) -> dict:
    """What depends on how a VMM is started (jailed or not)."""
    f: dict = {}
    ch = await srv.channel()
    stub = pb_grpc.NodeServiceStub(ch)
    await asyncio.sleep(0.5)
    f["rss0"] = rss_mib(srv.proc.pid)
    f["lat"] = await start_latency(srv, stub, g["echo"], a.n)
    f["rate"] = await create_rate(srv, stub, g["hello"], a.vms)
    f["mem"] = await memory_with_vms(srv, stub, g["idle"], a.rss_vms)
    await ch.close()
    return f


async def node_figures(a, g) -> dict:
    f: dict = {}
    for mode, extra in (("unjailed", ("--no-jail",)), ("jailed", ())):
        srv = Server(*extra)
        try:
            f[mode] = await mode_figures(srv, a, g)
        finally:
            srv.close()
    srv = Server()      # jailed, fresh: the service figures without 50 VMs around
    try:
        ch = await srv.channel()
        f["get1"] = await getvm_latency(srv, g["echo"], 1, 2000)
        f["getN"] = await getvm_latency(srv, g["echo"], a.clients, 100)
        f["con1"] = await console_fanout(srv, g["ioloop"], 1, a.console_bytes)
        f["conN"] = await console_fanout(srv, g["ioloop"], a.subscribers, a.console_bytes)
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


PHASES = ("spawn", "config", "plugins", "jail", "handshake", "imports", "kvm", "memory",
          "kernel", "devices", "boot_data", "vcpus", "first_run")


def report(a, f: dict, base: dict) -> str:
    J, U = f["jailed"], f["unjailed"]
    base_lat, base_cpu = statistics.median(base["lat"]), statistics.median(base["cpu"])
    c1, cN = f["con1"], f["conN"]

    def first(m):
        x = m["lat"]["first_insn"]
        return f"{ms(statistics.median(x))} / {ms(pct(x, 99))}"

    def per_cpu(m):
        r = m["rate"]
        return f"{r['n'] / r['cpu']:.1f} ({r['cpu'] / r['n'] * 1e3:.0f} ms CPU each)"

    def mem(m):
        x = m["mem"]
        return f"{x['uss']:.1f} / {x['pss']:.1f} / {x['rss']:.1f} MiB"

    def lp(d: dict) -> str:
        return (f"{ms(d['p50'])} / {ms(d['p99'])} ({d['rps']:.0f} req/s, "
                f"{d['cpu_us']:.0f} µs server CPU each)")
    jail_ms = J["lat"]["phases"].get("vmm.jail")
    ratio = statistics.median(J["lat"]["first_insn"]) / base_lat
    rows = [
        (f"CreateVm+StartVm → first guest instruction (median / p99, n={a.n})", first(J),
         first(U), f"{ms(base_lat)} (build → first KVM_RUN); `python -c pass` "
         f"{ms(statistics.median(base['pass']))}"),
        ("… as a multiple of the in-process build (target ≤ 2.5×)", f"{ratio:.1f}×",
         f"{statistics.median(U['lat']['first_insn']) / base_lat:.1f}×", "1×"),
        ("… until the StartVm reply is back (median)", ms(statistics.median(J["lat"]["rpc"])),
         ms(statistics.median(U["lat"]["rpc"])), ""),
        ("what the jail adds: the `vmm.jail` span (median; target ≤ 5 ms)",
         ms(jail_ms) if jail_ms is not None else "—", "—", "—"),
        (f"microVMs created+started per CPU-second, {a.vms} at once (hello guest; target ≥ 25)",
         per_cpu(J), per_cpu(U), f"{1 / base_cpu:.1f}"),
        ("… per second, wall", f"{J['rate']['n'] / J['rate']['wall']:.1f}/s",
         f"{U['rate']['n'] / U['rate']['wall']:.1f}/s", ""),
        (f"idle VMM memory USS / PSS / RSS (median of {a.rss_vms} idle VMs, 16 MiB; "
         "target USS ≤ 6 MiB)", mem(J), mem(U), "—"),
        (f"node service RSS, 0 → {a.rss_vms} VMs",
         f"{J['rss0']:.1f} → {J['mem']['node']:.1f} MiB",
         f"{U['rss0']:.1f} → {U['mem']['node']:.1f} MiB", ""),
    ]
    out = [f"| figure | jailed (default) | unjailed (`--no-jail`) | in-process MicroVm |",
           "|---|---|---|---|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out += ["", "Where CreateVm+StartVm time goes (median; spawn counted from CreateVm):", ""]
    names = [n for n in PHASES if f"vmm.{n}" in J["lat"]["phases"]
             or f"vmm.{n}" in U["lat"]["phases"]]
    out += ["| mode | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, m in (("jailed", J), ("unjailed", U)):
        ph = m["lat"]["phases"]
        out.append(f"| {label} | " + " | ".join(ms(ph[f"vmm.{n}"]) if f"vmm.{n}" in ph else "—"
                                                for n in names) + " |")
    out += ["", "| figure (jailed node) | node service | baseline (same run) |", "|---|---|---|"]
    rows = [
        (f"GetVm p50 / p99, {a.clients} concurrent clients", lp(f["getN"]),
         f"1 client: {lp(f['get1'])}"),
        ("… with tracing on (OTLP exporter, to a collector that drops the spans)",
         lp(f["getN_traced"]), f"1 client: {lp(f['get1_traced'])}"),
        (f"console stream, {a.subscribers} subscribers ({cN['bytes']} B each)",
         f"{cN['per_sub'] / 1e3:.1f} kB/s each, {cN['total'] / 1e3:.0f} kB/s total, "
         f"{cN['dropped']} B dropped",
         f"1 subscriber {c1['per_sub'] / 1e3:.1f} kB/s; same guest in-process "
         f"{base['console'] / 1e3:.1f} kB/s (guest-bound: one PIO exit per byte)"),
    ]
    out += [f"| {a_} | {b_} | {c_} |" for a_, b_, c_ in rows]
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
    g = {k: str(build_guest(k)) for k in ("echo", "hello", "ioloop", "idle")}
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
