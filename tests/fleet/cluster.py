"""Real processes for fleet tests and the fleet benchmark: a 3-member etcd cluster on
loopback, node services registered in it, controllers. Every start is a bounded wait;
every process is killed (by its own pid) at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCD_MISSING = ("etcd is not installed (Debian etcd-server; scripts/install-sysdeps "
                "installs it)")


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_for(cond, timeout: float, what: str, interval: float = 0.05):
    """Poll cond() until it returns something truthy; AssertionError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


def _kill(proc: subprocess.Popen | None, sig=signal.SIGKILL) -> None:
    if proc is not None and proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(5)


class EtcdCluster:
    def __init__(self, size: int = 3):
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None     # no fsync cost
        self.dir = tempfile.mkdtemp(prefix="fleet-etcd-", dir=base)
        ports = free_ports(2 * size)
        self.client_ports, self.peer_ports = ports[:size], ports[size:]
        self.names = [f"m{i}" for i in range(size)]
        self.procs: list[subprocess.Popen | None] = [None] * size
        self.initial = ",".join(f"{n}=http://127.0.0.1:{p}"
                                for n, p in zip(self.names, self.peer_ports))

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    def start_member(self, i: int, state: str = "new") -> None:
        c, p = self.client_ports[i], self.peer_ports[i]
        log = open(os.path.join(self.dir, f"{self.names[i]}.log"), "ab")
        self.procs[i] = subprocess.Popen(
            [ETCD, "--name", self.names[i], "--data-dir", os.path.join(self.dir, self.names[i]),
             "--listen-client-urls", f"http://127.0.0.1:{c}",
             "--advertise-client-urls", f"http://127.0.0.1:{c}",
             "--listen-peer-urls", f"http://127.0.0.1:{p}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
             "--initial-cluster", self.initial, "--initial-cluster-state", state,
             "--initial-cluster-token", os.path.basename(self.dir),
             # Fast elections, so losing the etcd leader costs ~0.5 s, not seconds.
             "--heartbeat-interval", "50", "--election-timeout", "500",
             "--logger", "zap", "--log-level", "warn"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

    def start(self, timeout: float = 20.0) -> "EtcdCluster":
        for i in range(len(self.names)):
            self.start_member(i)
        wait_for(lambda: all(self.healthy(i) for i in range(len(self.names))), timeout,
                 f"etcd members healthy (logs in {self.dir})", interval=0.2)
        return self

    def healthy(self, i: int) -> bool:
        if self.procs[i] is None or self.procs[i].poll() is not None:
            return False
        r = subprocess.run(["etcdctl", "--endpoints", self.endpoints[i], "--command-timeout",
                            "1s", "endpoint", "health"], capture_output=True,
                           env={**os.environ, "ETCDCTL_API": "3"})
        return r.returncode == 0

    def leader_index(self) -> int | None:
        r = subprocess.run(["etcdctl", "--endpoints", ",".join(self.endpoints),
                            "--command-timeout", "2s", "endpoint", "status", "-w", "json"],
                           capture_output=True, env={**os.environ, "ETCDCTL_API": "3"})
        try:
            st = json.loads(r.stdout)
        except ValueError:
            return None
        for s in st:
            if s["Status"]["header"]["member_id"] == s["Status"]["leader"]:
                return self.endpoints.index(s["Endpoint"])
        return None

    def kill_member(self, i: int) -> None:
        _kill(self.procs[i])

    def restart_member(self, i: int, timeout: float = 20.0) -> None:
        self.start_member(i, state="existing")
        wait_for(lambda: self.healthy(i), timeout, f"etcd member {i} healthy again",
                 interval=0.2)

    def stop(self) -> None:
        for p in self.procs:
            _kill(p)
        shutil.rmtree(self.dir, ignore_errors=True)


def node_vmm_pids(state_dir: str) -> dict[int, str]:
    """{pid: vm id} of the VMMs under this node's state dir, from the process table alone
    (works while the node service is frozen or dead)."""
    from nodesvc.core.launcher import JailConfig
    from nodesvc.fleet.fence import _cgroup_pids, _start_time
    out = {}
    vm_dir = os.path.join(state_dir, "vms")
    parent = JailConfig(os.path.join(state_dir, "jail")).parent_cgroup
    for name in os.listdir(vm_dir) if os.path.isdir(vm_dir) else []:
        try:
            with open(os.path.join(vm_dir, name)) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        for pid in _cgroup_pids([rec["id"]], parent):     # jailed VMMs
            if _start_time(pid) is not None:
                out[pid] = rec["id"]
        vmm = rec.get("vmm") or {}
        if vmm.get("pid") and _start_time(vmm["pid"]) == vmm.get("start_time"):
            out[vmm["pid"]] = rec["id"]
    marker = os.fsencode(os.path.join(state_dir, "run") + "/")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{d}/stat", "rb") as f:
                st = f.read()
        except OSError:
            continue
        if st[st.rfind(b")") + 2:][:1] in (b"Z", b"X"):
            continue
        if any(marker in a for a in argv) and b"--id" in argv:
            out[int(d)] = argv[argv.index(b"--id") + 1].decode()
    return out




class FleetNode:
    """A node service registered in the fleet (real KVM, real VMMs)."""

    def __init__(self, name: str, etcd: EtcdCluster, *, memory_mib: int, labels: dict,
                 ttl: int = 3, extra: tuple = ()):
        self.name, self.etcd, self.ttl = name, etcd, ttl
        self.memory_mib, self.labels, self.extra = memory_mib, labels, list(extra)
        self.state_dir = tempfile.mkdtemp(prefix=f"fl-{name}-", dir="/tmp")
        self.socket = os.path.join(self.state_dir, "s.sock")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "FleetNode":
        cmd = [sys.executable, "-m", "nodesvc.server.main", "serve", "--state-dir",
               self.state_dir, "--socket", self.socket, "--log-level", "info",
               "--memory-mib", str(self.memory_mib), "--reserve-mib", "0",
               "--cpu-overcommit", "32", "--vmm-metrics-interval", "60",
               "--fleet-etcd", ",".join(self.etcd.endpoints), "--node-name", self.name,
               "--fleet-lease-ttl", str(self.ttl), *self.extra]
        for k, v in self.labels.items():
            cmd += ["--fleet-label", f"{k}={v}"]
        log = open(os.path.join(self.state_dir, "server.log"), "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()
        wait_for(lambda: self.proc.poll() is not None or os.path.exists(self.socket),
                 timeout, f"node {self.name} socket")
        assert self.proc.poll() is None, self.log_text()
        return self

    def log_text(self) -> str:
        return Path(self.state_dir, "server.log").read_text(errors="replace")[-4000:]

    def vmm_pids(self) -> dict[int, str]:
        return node_vmm_pids(self.state_dir)

    def watchdog_pid(self) -> int | None:
        try:
            return int(Path(self.state_dir, "fleet", "fence.lock").read_text() or 0) or None
        except (OSError, ValueError):
            return None

    def _zygote_pids(self) -> list[int]:
        """The node's VMM zygote and the jailed VMMs forked from it (they carry its command
        line, which names its socket)."""
        marker = os.fsencode(os.path.join(self.state_dir, "zygote.sock"))
        pids = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        if marker in f.read():
                            pids.append(int(d))
                except OSError:
                    pass
        return pids

    def kill_all(self) -> None:
        """Like a host dying: SIGKILL the node service, its VMMs (and zygote) and its fence
        watchdog."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        _kill(self.proc)
        for pid in [*self.vmm_pids(), *self._zygote_pids(), self.watchdog_pid()]:
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def stop(self) -> None:
        self.kill_all()
        shutil.rmtree(self.state_dir, ignore_errors=True)


class Controller:
    def __init__(self, ident: str, etcd: EtcdCluster, ttl: int = 3, log_dir: str = "/tmp",
                 extra: tuple = ()):
        self.ident, self.etcd, self.ttl, self.extra = ident, etcd, ttl, list(extra)
        self.log_path = os.path.join(log_dir, f"controller-{ident}.log")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Controller":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nodesvc.fleet", "controller", "--etcd",
             ",".join(self.etcd.endpoints), "--id", self.ident, "--lease-ttl", str(self.ttl),
             *self.extra],
            cwd=ROOT, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        return self

    def kill(self) -> None:
        _kill(self.proc)


def run(coro):
    return asyncio.run(coro)


def tiny_spec(kernel: str, memory_mib: int = 32, vcpus: int = 1) -> dict:
    return {"machine": {"vcpus": vcpus, "memoryMib": memory_mib},
            "boot": {"kernelPath": kernel, "bootArgs": ""}}
