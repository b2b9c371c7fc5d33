"""Boot the default guest and print what the VMM itself costs.

Figures: wall time from VMM start to the first KVM_RUN and to the `Run /init` line, the
share of vCPU wall time spent outside KVM_RUN (our exit handling), exits by kind, and the
VMM's RSS minus the guest memory the guest touched — beside a bare `python3 -c pass` RSS
measured in the same run as the floor. With --peer qemu, QEMU microvm boots the same
kernel and initramfs in the same run for a side-by-side time to `Run /init` and QEMU's
own RSS overhead (its RSS minus the resident part of its guest-RAM mapping, read from
/proc/PID/smaps 0.5 s after the marker, as ours is).

    python bench/boot.py [--vcpus 2] [--mem-mib 256] [--peer qemu]
"""

from __future__ import annotations

import time

T_START = time.monotonic()

import argparse  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nodesvc.vmm.config import config_from_flags  # noqa: E402
from nodesvc.vmm.console import CaptureSink  # noqa: E402
from nodesvc.vmm.vm import MicroVm  # noqa: E402

MARKER = b"Run /init as init process"


def rss_kib(pid: int | str = "self") -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def floor_rss_kib() -> int:
    out = subprocess.run([sys.executable, "-c",
                          "print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def time_to_marker(sink: CaptureSink, marker: bytes, t0: float, timeout: float) -> float | None:
    return time.monotonic() - t0 if sink.wait_for(marker, timeout) else None


def boot_ours(kernel: str, initrd: str, vcpus: int, mem_mib: int, timeout: float) -> dict:
    sink = CaptureSink()
    vm = MicroVm(config_from_flags(kernel=kernel, initrd=initrd, vcpus=vcpus, mem_mib=mem_mib),
                 vm_id="bench", console_out=sink)
    vm.start()
    t_init = time_to_marker(sink, MARKER, T_START, timeout)
    time.sleep(0.5)  # let the first /init failure play out a little: steady-state RSS
    vm.pause()
    stats = vm.stats()
    wall = time.monotonic() - vm.started_at
    rss = rss_kib()
    guest_touched = vm.memory.resident_bytes() // 1024
    vm.resume()
    vm.stop("benchmark done")
    vm.shutdown()
    return {"first_run": stats["first_run_after"] + (vm.created_at - T_START),
            "run_init": t_init, "outside_kvm": 1 - stats["time_in_kvm"] / (wall * vcpus),
            "exits": stats["exits"], "rss": rss, "guest_touched": guest_touched,
            "phases": stats["phases"]}


def qemu_rss_kib(pid: int, mem_mib: int) -> tuple[int, int]:
    """(total RSS, RSS of the guest-RAM mapping) of a QEMU process, in KiB."""
    total, guest, size = 0, 0, 0
    for line in open(f"/proc/{pid}/smaps"):
        key, _, rest = line.partition(":")
        if key == "Size":
            size = int(rest.split()[0])
        elif key == "Rss":
            rss = int(rest.split()[0])
            total += rss
            if mem_mib * 1024 <= size <= (mem_mib + 4) * 1024:   # guest RAM (+ alignment)
                guest = max(guest, rss)
    return total, guest


def boot_qemu(kernel: str, initrd: str, vcpus: int, mem_mib: int, cmdline: str,
              timeout: float) -> dict | None:
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        return None
    t0 = time.monotonic()
    p = subprocess.Popen([qemu, "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "qemu64",
                          "-m", str(mem_mib), "-smp", str(vcpus), "-nodefaults",
                          "-no-user-config", "-nographic", "-serial", "stdio",
                          "-kernel", kernel, "-initrd", initrd, "-append", cmdline],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    found: list[float] = []
    seen = threading.Event()

    def reader():
        buf = b""
        for chunk in iter(lambda: p.stdout.read1(4096), b""):
            buf = (buf + chunk)[-4096:]
            if MARKER in buf and not found:
                found.append(time.monotonic() - t0)
                seen.set()

    threading.Thread(target=reader, daemon=True).start()
    rss = guest = None
    if seen.wait(timeout):
        time.sleep(0.5)     # as for ours: a little past the marker
        try:
            rss, guest = qemu_rss_kib(p.pid, mem_mib)
        except OSError:     # the guest already ended (reset) and QEMU with it
            pass
    p.kill()
    p.wait()
    return {"run_init": found[0], "rss": rss, "guest_touched": guest} if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", default=str(ROOT / "guest/out/vmlinux"))
    ap.add_argument("--initrd", default=str(ROOT / "guest/out/initramfs.cpio"))
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--mem-mib", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--peer", choices=["none", "qemu"], default="none")
    a = ap.parse_args()
    ours = boot_ours(a.kernel, a.initrd, a.vcpus, a.mem_mib, a.timeout)
    floor = floor_rss_kib()
    print(f"nodesvc-vmm boot of {Path(a.kernel).name}, {a.vcpus} vCPUs, {a.mem_mib} MiB")
    print(f"  VMM start -> first KVM_RUN      {ours['first_run'] * 1000:8.1f} ms")
    phases = ", ".join(f"{k} {v * 1000:.1f}" for k, v in ours["phases"].items())
    print(f"    build phases (ms)             {phases}")
    init = ours["run_init"]
    print(f"  VMM start -> 'Run /init'        {init:8.1f} s" if init else "  'Run /init' not reached")
    print(f"  vCPU wall time outside KVM_RUN  {ours['outside_kvm'] * 100:8.2f} %")
    print("  exits by kind                   " + ", ".join(f"{k} {v}" for k, v in
                                                          sorted(ours["exits"].items())))
    vmm = ours["rss"] - ours["guest_touched"]
    print(f"  RSS {ours['rss'] / 1024:.1f} MiB - guest touched {ours['guest_touched'] / 1024:.1f} MiB"
          f" = VMM {vmm / 1024:.1f} MiB   (floor: python3 -c pass {floor / 1024:.1f} MiB,"
          f" ratio {vmm / floor:.2f}x)")
    if a.peer == "qemu":
        from nodesvc.vmm import cmdline
        q = boot_qemu(a.kernel, a.initrd, a.vcpus, a.mem_mib, cmdline.compose(None, []), a.timeout)
        if not q or not init:
            print("  QEMU peer did not reach 'Run /init' (or is not installed: make sysdeps)")
            return
        print(f"  QEMU microvm -> 'Run /init'     {q['run_init']:8.1f} s   "
              f"(ratio ours/QEMU {init / q['run_init']:.2f})")
        if q["rss"] is not None:
            qv = q["rss"] - q["guest_touched"]
            print(f"  QEMU RSS {q['rss'] / 1024:.1f} MiB - guest touched "
                  f"{q['guest_touched'] / 1024:.1f} MiB = QEMU {qv / 1024:.1f} MiB   "
                  f"(ratio ours/QEMU {vmm / qv:.2f}x)")


if __name__ == "__main__":
    main()
