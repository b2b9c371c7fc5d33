"""VM lifecycle timings that tests only wait for (tests assert what happens, not how fast):
each figure beside the floor or nominal value it should be near, measured in the same run.

    python bench/lifecycle.py [-n 5]

- SIGKILLed VMM → the VM reads FAILED (GetVm polled every 2 ms); floor: SIGKILL of a
  plain child → its waitpid returns, in this process.
- StopVm with a 0.3 s grace period, echo guest (ignores Ctrl-Alt-Del, so the stop is
  forced at the end of the grace); nominal: the grace period.
- StopVm with a 60 s grace period under a 3 s RPC deadline; nominal: the grace the node
  caps it to (deadline - 1.5 s, leaving time for the forced path).
- Forced StopVm + DeleteVm (what `nodectl rm -f` sends); floor: as for SIGKILL.
- The VMM's log FIFO writer with no reader (it drops, never blocks), per line; baseline:
  `os.write` of the same line to /dev/null.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from google.protobuf.duration_pb2 import Duration  # noqa: E402

from node import Server, spec  # noqa: E402
from nodesvc.api.v1 import nodesvc_pb2 as pb  # noqa: E402
from nodesvc.api.v1 import nodesvc_pb2_grpc as pb_grpc  # noqa: E402
from tests.guests.build import build_guest  # noqa: E402

ST = pb.VmState


def med_ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:8.1f} ms (max {max(xs) * 1e3:.1f})"


def kill_floor(n: int) -> list[float]:
    out = []
    for _ in range(n):
        p = subprocess.Popen(["sleep", "60"])
        time.sleep(0.05)
        t0 = time.perf_counter()
        os.kill(p.pid, signal.SIGKILL)
        os.waitpid(p.pid, 0)
        out.append(time.perf_counter() - t0)
    return out


async def wait_state(stub, vm_id: str, state: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (await stub.GetVm(pb.GetVmRequest(vm_id=vm_id))).vm.state != state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{vm_id} never reached {ST.Name(state)}")
        await asyncio.sleep(0.002)


async def node_figures(srv: Server, echo: str, n: int) -> dict[str, list[float]]:
    ch = await srv.channel()
    stub = pb_grpc.NodeServiceStub(ch)
    got: dict[str, list[float]] = {"kill": [], "grace": [], "capped": [], "rmf": []}
    try:
        for i in range(n):
            create = pb.CreateVmRequest(vm_id=f"k{i}", spec=spec(echo, "idle=60000"), start=True)
            vm = (await stub.CreateVm(create, timeout=60)).vm
            t0 = time.perf_counter()
            os.kill(vm.vmm_pid, signal.SIGKILL)
            await wait_state(stub, f"k{i}", ST.VM_STATE_FAILED)
            got["kill"].append(time.perf_counter() - t0)
            await stub.DeleteVm(pb.DeleteVmRequest(vm_id=f"k{i}"))

            for key, grace, deadline in (("grace", Duration(nanos=300_000_000), 15),
                                         ("capped", Duration(seconds=60), 3)):
                vm_id = f"{key}{i}"
                await stub.CreateVm(pb.CreateVmRequest(vm_id=vm_id, spec=spec(echo, "idle=60000"),
                                                       start=True), timeout=60)
                t0 = time.perf_counter()
                vm = (await stub.StopVm(pb.StopVmRequest(vm_id=vm_id, grace_period=grace),
                                        timeout=deadline)).vm
                got[key].append(time.perf_counter() - t0)
                assert vm.state == ST.VM_STATE_STOPPED, vm.reason
                await stub.DeleteVm(pb.DeleteVmRequest(vm_id=vm_id))

            await stub.CreateVm(pb.CreateVmRequest(vm_id=f"f{i}", spec=spec(echo, "idle=60000"),
                                                   start=True), timeout=60)
            t0 = time.perf_counter()
            await stub.StopVm(pb.StopVmRequest(vm_id=f"f{i}", force=True), timeout=20)
            await stub.DeleteVm(pb.DeleteVmRequest(vm_id=f"f{i}"))
            got["rmf"].append(time.perf_counter() - t0)
    finally:
        await ch.close()
    return got


def fifo_figures(lines: int = 2000) -> tuple[float, float]:
    from nodesvc.vmm.process import FifoWriter
    d = tempfile.mkdtemp(prefix="lcb-", dir="/tmp")
    path = os.path.join(d, "log.fifo")
    os.mkfifo(path)
    w = FifoWriter(path)
    rec = {"message": "x" * 100, "n": 0}
    t0 = time.perf_counter()
    for i in range(lines):
        rec["n"] = i
        w.write_line(rec)
    ours = (time.perf_counter() - t0) / lines
    fd = os.open("/dev/null", os.O_WRONLY)
    t0 = time.perf_counter()
    for i in range(lines):
        rec["n"] = i
        os.write(fd, json.dumps(rec).encode() + b"\n")
    base = (time.perf_counter() - t0) / lines
    os.close(fd)
    os.unlink(path)
    os.rmdir(d)
    return ours, base


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5, help="runs of each node figure")
    a = ap.parse_args()
    echo = str(build_guest("echo"))
    srv = Server()
    try:
        got = asyncio.run(node_figures(srv, echo, a.n))
    finally:
        srv.close()
    floor = kill_floor(a.n)
    ours, base = fifo_figures()
    print(f"VM lifecycle timings, median of {a.n} (echo guest, 1 vCPU, 32 MiB)")
    print(f"  SIGKILLed VMM -> VM FAILED           {med_ms(got['kill'])}"
          f"   floor: SIGKILL -> waitpid {med_ms(floor)}")
    print(f"  StopVm, 0.3 s grace, forced at end   {med_ms(got['grace'])}   nominal 300.0 ms")
    print(f"  StopVm, 60 s grace, 3 s RPC deadline {med_ms(got['capped'])}"
          "   nominal: grace capped to deadline - 1.5 s = 1500.0 ms")
    print(f"  StopVm(force) + DeleteVm (rm -f)     {med_ms(got['rmf'])}"
          f"   floor: SIGKILL -> waitpid {med_ms(floor)}")
    print(f"  log FIFO, no reader, per line        {ours * 1e6:8.1f} µs"
          f"   os.write to /dev/null {base * 1e6:.1f} µs (ratio {ours / base:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
