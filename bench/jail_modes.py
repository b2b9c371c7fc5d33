"""Zygote vs exec jail mode, side by side in one run (docs/security.md, "Zygote or exec").

    python bench/jail_modes.py [-n 10] [--vms 10] [--idle-vms 8]

For each mode, a real node service (`--jail-mode zygote|exec`): CreateVm+StartVm → first
guest instruction (median, and where the time goes), create+start throughput per
CPU-second (node, zygote, VMMs and relays all counted), and the memory of idle VMMs (USS,
PSS, RSS from smaps_rollup; in exec mode the jailer's relay, one per VM, too). Uses
bench/node.py's server harness and measurements; hosts are noisy: read medians and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
import node as bn  # noqa: E402  (bench/node.py)

from nodesvc.api.v1 import nodesvc_pb2 as pb  # noqa: E402
from nodesvc.api.v1 import nodesvc_pb2_grpc as pb_grpc  # noqa: E402
from tests.guests.build import build_guest  # noqa: E402


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("PPid:")[1].split()[0])


async def idle_memory(srv: bn.Server, stub, idle: str, n: int, exec_mode: bool) -> dict:
    vmm, relay = [], []
    for i in range(n):
        vm = (await stub.CreateVm(pb.CreateVmRequest(vm_id=f"mem-{i}", spec=bn.spec(
            idle, "", memory_mib=16), start=True), timeout=120)).vm
        vmm.append(vm.vmm_pid)
        if exec_mode:
            relay.append(_ppid(vm.vmm_pid))
    await asyncio.sleep(1.0)

    def med(pids):
        per = [bn.smaps_mib(p) for p in pids]
        return {k: statistics.median(m[k] for m in per) for k in ("uss", "pss", "rss")}
    return {"vmm": med(vmm), "relay": med(relay) if relay else None}


async def create_rate(srv: bn.Server, stub, hello: str, n: int) -> dict:
    """bench/node.py's create_rate, except that a hello guest which reset before StartVm
    answered counts as started (it ran: that RPC race is the node's, in both modes)."""
    cpu0, t0 = srv.cpu(), time.monotonic()
    res = await asyncio.gather(*(stub.CreateVm(pb.CreateVmRequest(
        vm_id=f"rate-{i}", spec=bn.spec(hello, ""), start=True), timeout=120)
        for i in range(n)), return_exceptions=True)
    wall = time.monotonic() - t0
    raced = [r for r in res if isinstance(r, grpc.RpcError)]
    for r in raced:
        if "guest-reset" not in (r.details() or ""):
            raise r
    while any(v.state in bn.ACTIVE for v in (await stub.ListVms(pb.ListVmsRequest())).vms):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    cpu = srv.cpu() - cpu0
    for i in range(n):
        await stub.DeleteVm(pb.DeleteVmRequest(vm_id=f"rate-{i}"))
    return {"wall": wall, "cpu": cpu, "n": n, "raced": len(raced)}


async def mode(name: str, a, g) -> dict:
    srv = bn.Server("--jail-mode", name)
    try:
        ch = await srv.channel()
        stub = pb_grpc.NodeServiceStub(ch)
        f = {"lat": await bn.start_latency(srv, stub, g["echo"], a.n),
             "rate": await create_rate(srv, stub, g["hello"], a.vms),
             "mem": await idle_memory(srv, stub, g["idle"], a.idle_vms, name == "exec")}
        await ch.close()
        return f
    finally:
        srv.close()


def report(a, z: dict, e: dict) -> str:
    def lat(f):
        return bn.ms(statistics.median(f["lat"]["first_insn"]))

    def rpc(f):
        return bn.ms(statistics.median(f["lat"]["rpc"]))

    def rate(f):
        r = f["rate"]
        raced = f", {r['raced']} raced" if r["raced"] else ""
        return f"{r['n'] / r['cpu']:.1f} VMs/CPU-s ({r['n'] / r['wall']:.1f}/s wall{raced})"

    def mem(m):
        return f"{m['uss']:.1f} / {m['pss']:.1f} / {m['rss']:.1f} MiB" if m else "—"

    def phases(f):
        """Median per phase; "rest": the first instruction's median minus their sum (in
        exec mode, mostly the VMM's imports, which come after its main())."""
        ph = f["lat"]["phases"]
        rest = statistics.median(f["lat"]["first_insn"]) - sum(ph.values())
        return ", ".join([*(f"{k.removeprefix('vmm.')} {v * 1e3:.0f}" for k, v in ph.items()
                            if v >= 0.002), f"rest {rest * 1e3:.0f}"])
    rows = [
        (f"CreateVm+StartVm → first guest instruction (median of {a.n})", lat(z), lat(e)),
        ("CreateVm+StartVm RPCs", rpc(z), rpc(e)),
        (f"create+start throughput ({a.vms} hello VMs)", rate(z), rate(e)),
        (f"idle VMM USS / PSS / RSS (median of {a.idle_vms}, 16 MiB guests)",
         mem(z["mem"]["vmm"]), mem(e["mem"]["vmm"])),
        ("the jailer's relay per VM, USS / PSS / RSS", "—", mem(e["mem"]["relay"])),
    ]
    w = max(len(r[0]) for r in rows)
    out = [f"{'':{w}}  {'zygote':>26}  {'exec':>26}"]
    out += [f"{r[0]:{w}}  {r[1]:>26}  {r[2]:>26}" for r in rows]
    out += ["", f"zygote phases (ms): {phases(z)}", f"exec phases (ms):   {phases(e)}"]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=10, help="start-latency samples per mode")
    p.add_argument("--vms", type=int, default=10, help="VMs for the throughput figure")
    p.add_argument("--idle-vms", type=int, default=8, help="idle VMs for the memory figure")
    a = p.parse_args()
    g = {k: str(build_guest(k)) for k in ("echo", "hello", "idle")}
    z = asyncio.run(mode("zygote", a, g))
    e = asyncio.run(mode("exec", a, g))
    print(report(a, z, e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
