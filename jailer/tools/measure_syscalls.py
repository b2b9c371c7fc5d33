"""Measure the system calls each VMM thread kind really makes (input for seccomp.py).

    .venv/bin/python jailer/tools/measure_syscalls.py [--guest echo] [--out DIR]

Runs the real VMM process (`nodesvc.vmm.process`) with a tiny guest under `strace -ff`,
drives it over its control socket (start, status, console input, pause, resume,
update_drive, flush_metrics, stop) and prints, per thread kind, every syscall seen, with
the ioctl requests and socket families. Build-time and run-time calls of the control
thread are told apart by a marker (a failing `stat` of /MEASURE-MARK-<phase>) the
wrapped VMM makes after each request. Thread kinds come from Python thread names,
recorded by the wrapper (CPython 3.11 does not name OS threads).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KINDS = [("vcpu", re.compile(r"^vcpu\d+$")), ("loop", re.compile(r"^vmm-events$")),
         ("control", re.compile(r"^MainThread$"))]


def _as_vmm(argv: list[str]) -> int:
    """Inside the traced process: record thread names, mark phases, run the VMM."""
    import threading
    names_file = argv.pop(0)
    names: dict[int, str] = {}
    orig = threading.Thread._bootstrap_inner

    def boot(self):
        names[threading.get_native_id()] = self.name
        return orig(self)
    threading.Thread._bootstrap_inner = boot
    names[threading.get_native_id()] = "MainThread"
    from nodesvc.vmm import process
    orig_handle = process.VmmProcess.handle_line

    def handle(self, line):
        op = json.loads(line).get("op")
        _mark(f"before-{op}")
        try:
            return orig_handle(self, line)
        finally:
            _mark(f"after-{op}")
            with open(names_file, "w") as f:
                json.dump(names, f)
    process.VmmProcess.handle_line = handle
    return process.main(argv)


def _mark(phase: str) -> None:
    try:
        os.stat(f"/MEASURE-MARK-{phase}")
    except OSError:
        pass


class Control:
    def __init__(self, path: str):
        self.s = socket.socket(socket.AF_UNIX)
        for _ in range(500):
            try:
                self.s.connect(path)
                break
            except OSError:
                time.sleep(0.02)
        self.f = self.s.makefile("rb")
        self.n = 0
        self.events = []
        self._line()    # hello

    def _line(self):
        return json.loads(self.f.readline())

    def req(self, op, **args):
        self.n += 1
        self.s.sendall(json.dumps({"id": self.n, "op": op, "args": args}).encode() + b"\n")
        while True:
            msg = self._line()
            if msg.get("id") == self.n:
                return msg
            self.events.append(msg)


def _drive(run: str) -> None:
    import base64
    c = Control(os.path.join(run, "control.sock"))
    print("start:", c.req("start")["ok"])
    time.sleep(0.5)
    c.req("status")
    c.req("console_input", data=base64.b64encode(b"hi").decode())
    time.sleep(0.2)
    c.req("pause")
    c.req("resume")
    c.req("update_drive", drive_id="data", path_on_host=os.path.join(run, "disk2.img"))
    c.req("flush_metrics")
    time.sleep(0.2)
    c.req("console_input", data=base64.b64encode(b"q").decode())
    time.sleep(0.5)
    try:
        c.req("stop")
    except (OSError, ValueError):
        pass


def _parse(tdir: str, names: dict[str, str]):
    calls = collections.defaultdict(collections.Counter)
    ioctls = collections.defaultdict(collections.Counter)
    families = collections.defaultdict(set)
    line_re = re.compile(r"^(?:\d+:\d+:\d+\.\d+ )?([a-z_0-9]+)\((.*)")
    for path in glob.glob(os.path.join(tdir, "t.*")):
        tid = path.rsplit(".", 1)[1]
        name = names.get(tid, "?")
        kind = next((k for k, rx in KINDS if rx.match(name)), f"other:{name}")
        phase = "build" if kind == "control" else "run"
        with open(path, errors="replace") as f:
            for line in f:
                if "MEASURE-MARK-after-start" in line:
                    phase = "run"
                m = line_re.match(line)
                if not m or "MEASURE-MARK" in line:
                    continue
                sc, rest = m.groups()
                key = f"{kind}/{phase}" if kind == "control" else kind
                calls[key][sc] += 1
                if sc == "ioctl":
                    ioctls[key][rest.split(",")[1].strip()] += 1
                if sc in ("socket", "socketpair"):
                    families[key].add(rest.split(",")[0])
    return calls, ioctls, families


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--as-vmm":
        return _as_vmm(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--guest", default="echo")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    sys.path.insert(0, ROOT)
    from tests.guests.build import build_guest
    kernel = str(build_guest(a.guest))
    run = a.out or tempfile.mkdtemp(prefix="measure-")
    tdir = os.path.join(run, "strace")
    os.makedirs(tdir, exist_ok=True)
    for d in ("disk.img", "disk2.img"):
        with open(os.path.join(run, d), "wb") as f:
            f.truncate(1 << 20)
    cfg = {"boot-source": {"kernel_image_path": kernel, "boot_args": "idle=20000"},
           "machine-config": {"vcpu_count": 2, "mem_size_mib": 32},
           "drives": [{"drive_id": "data", "path_on_host": os.path.join(run, "disk.img"),
                       "is_root_device": False, "is_read_only": False}],
           "entropy": {},
           "vsock": {"guest_cid": 3, "uds_path": os.path.join(run, "v.sock")}}
    with open(os.path.join(run, "config.json"), "w") as f:
        json.dump(cfg, f)
    for fifo in ("console", "log", "metrics"):
        os.mkfifo(os.path.join(run, f"{fifo}.fifo"))
    names_file = os.path.join(run, "threads.json")
    cmd = ["strace", "-ff", "-qq", "-X", "raw", "-o", os.path.join(tdir, "t"),
           sys.executable, os.path.abspath(__file__), "--as-vmm", names_file,
           "--id", "measure", "--config-file", os.path.join(run, "config.json"),
           "--control-socket", os.path.join(run, "control.sock"),
           "--console-fifo", os.path.join(run, "console.fifo"),
           "--log-fifo", os.path.join(run, "log.fifo"),
           "--metrics-fifo", os.path.join(run, "metrics.fifo"),
           "--exit-file", os.path.join(run, "exit.json"), "--metrics-interval", "0.2"]
    p = subprocess.Popen(cmd, cwd=run)
    try:
        _drive(run)
    finally:
        p.wait(timeout=60)
    with open(names_file) as f:
        names = {str(k): v for k, v in json.load(f).items()}
    calls, ioctls, families = _parse(tdir, names)
    report = {k: {"syscalls": dict(sorted(calls[k].items())),
                  "ioctls": dict(ioctls.get(k, {})),
                  "socket_families": sorted(families.get(k, ()))} for k in sorted(calls)}
    print(json.dumps(report, indent=1))
    print(f"(raw traces in {tdir}; exit: {open(os.path.join(run, 'exit.json')).read()})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
