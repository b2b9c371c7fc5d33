"""Snapshot figures: create time and file sizes, restore → running beside a cold boot of
the same tiny guest (`counter`), in the same run.

    python bench/snapshot.py [-n 5] [--mem-mib 256] [--no-jail-only]

In process (MicroVm, no jail): cold boot = MicroVm() → first guest output byte; restore =
restore_vm_from() → first KVM_RUN (the first guest instruction) and → first new output
byte; with the build phases of each, so it shows where the time goes.
Through the node (every VMM jailed, forked from the zygote): cold = CreateVm+start →
first output byte; restore = restore_vm → its return (the VMM has started its vCPUs) and
→ first new output byte.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nodesvc.vmm.config import config_from_flags  # noqa: E402
from nodesvc.vmm.console import CaptureSink  # noqa: E402
from nodesvc.vmm.snapshot import create_snapshot, restore_vm_from  # noqa: E402
from nodesvc.vmm.vm import MicroVm  # noqa: E402
from tests.guests.build import build_guest  # noqa: E402

ARGS = "count=1000000 delay=50"   # prints at once after a restore, too


def ms(xs) -> str:
    return f"{statistics.median(xs) * 1e3:7.1f} ms (min {min(xs) * 1e3:.1f}, max {max(xs) * 1e3:.1f})"


def in_process(n: int, mem_mib: int) -> None:
    cfg = config_from_flags(kernel=str(build_guest("counter")), boot_args=ARGS, mem_mib=mem_mib)
    boot, boot_phases = [], []
    for _ in range(n):
        sink = CaptureSink()
        t0 = time.monotonic()
        vm = MicroVm(cfg, console_out=sink)
        vm.start()
        sink.wait_for(b"C", 30)
        boot.append(time.monotonic() - t0)
        boot_phases.append(dict(vm.phases))
        vm.shutdown()
    d = tempfile.mkdtemp(prefix="snapbench-")
    sink = CaptureSink()
    vm = MicroVm(cfg, console_out=sink)
    vm.start()
    sink.wait_for(b"CPU 0 2\n", 30)
    vm.pause()
    sfd = os.open(f"{d}/s", os.O_RDWR | os.O_CREAT, 0o600)
    mfd = os.open(f"{d}/m", os.O_RDWR | os.O_CREAT, 0o600)
    info = create_snapshot(vm, sfd, mfd)
    vm.shutdown()
    first_insn, first_out, phases = [], [], []
    for _ in range(n):
        sink = CaptureSink()
        t0 = time.monotonic()
        vm = restore_vm_from(sfd, mfd, console_out=sink)
        vm.start()
        sink.wait_for(b"C", 30)
        first_out.append(time.monotonic() - t0)
        first_insn.append(vm.first_run_at - t0)
        phases.append(dict(vm.phases))
        vm.shutdown()
    du = (os.fstat(mfd).st_blocks * 512) >> 10
    print(f"in process, {mem_mib} MiB guest, {n} runs (medians)")
    print(f"  snapshot create        {info['seconds']['total'] * 1e3:7.1f} ms  (devices "
          f"{info['seconds']['devices'] * 1e3:.1f}, vCPUs+VM {info['seconds']['vcpus_vm'] * 1e3:.1f}, "
          f"state file {info['seconds']['state_file'] * 1e3:.1f}, memory file "
          f"{info['seconds']['memory_file'] * 1e3:.1f})")
    print(f"  state file {info['state_bytes'] >> 10} KiB; memory file {info['memory_bytes'] >> 20} MiB "
          f"apparent, {du} KiB on disk")
    print(f"  cold boot → first output   {ms(boot)}")
    print(f"  restore → first KVM_RUN    {ms(first_insn)}")
    print(f"  restore → first output     {ms(first_out)}")
    for name, runs in (("boot", boot_phases), ("restore", phases)):
        keys = list(runs[0])
        print(f"  {name} phases: " + ", ".join(
            f"{k} {statistics.median(r[k] for r in runs) * 1e3:.1f}" for k in keys))
    shutil.rmtree(d, ignore_errors=True)


def through_node(n: int, mem_mib: int) -> None:
    from nodesvc.core import Node, NodeConfig
    from nodesvc.server.convert import to_dict
    from tests.service.conftest import vm_spec
    spec = to_dict(vm_spec(str(build_guest("counter")), memory_mib=mem_mib, boot_args=ARGS))
    d = tempfile.mkdtemp(prefix="snapnode-", dir="/tmp")

    async def first_output(node, vm_id, t0, timeout=30.0):
        while not node.vms[vm_id].console.history():
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(vm_id)
            await asyncio.sleep(0.001)
        return time.monotonic() - t0

    async def main():
        node = Node(NodeConfig(state_dir=d, vmm_metrics_interval_s=0))
        await node.open()
        cold, ret, out, create = [], [], [], 0.0
        try:
            for i in range(n):
                t0 = time.monotonic()
                await node.create_vm(f"cold{i}", spec, start=True)
                cold.append(await first_output(node, f"cold{i}", t0))
                await node.stop_vm(f"cold{i}", force=True)
            await node.create_vm("src", spec, start=True)
            await first_output(node, "src", time.monotonic())
            t0 = time.monotonic()
            snap = await node.create_snapshot("src", "s", resume=False)
            create = time.monotonic() - t0
            await node.stop_vm("src", force=True)
            for i in range(n):
                t0 = time.monotonic()
                await node.restore_vm("s", f"r{i}")
                ret.append(time.monotonic() - t0)
                out.append(await first_output(node, f"r{i}", t0))
                await node.stop_vm(f"r{i}", force=True)
        finally:
            for vm_id, e in list(node.vms.items()):
                if e.handle is not None:
                    await node.stop_vm(vm_id, force=True)
            await node.close()
        print(f"through the node, jailed VMMs, {mem_mib} MiB guest, {n} runs (medians)")
        print(f"  CreateSnapshot (pause+save) {create * 1e3:7.1f} ms; files {snap['state_bytes'] >> 10} KiB "
              f"+ {snap['memory_bytes'] >> 20} MiB ({snap['disk_bytes'] >> 10} KiB on disk)")
        print(f"  cold boot → first output    {ms(cold)}")
        print(f"  restore → VMM running       {ms(ret)}")
        print(f"  restore → first output      {ms(out)}")

    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--mem-mib", type=int, default=256)
    ap.add_argument("--no-jail-only", action="store_true")
    a = ap.parse_args()
    in_process(a.n, a.mem_mib)
    if not a.no_jail_only:
        through_node(a.n, a.mem_mib)
