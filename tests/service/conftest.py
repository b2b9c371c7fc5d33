"""A real node service in a subprocess on a short-path Unix socket, driven by sync clients.

VMM processes outlive the node service by design, so every fixture that starts a server
also kills the VMMs started under its state dir when the test ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nodesvc.api.v1 import nodesvc_pb2 as pb
from nodesvc.api.v1 import nodesvc_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]


def vmm_pids(state_dir: str) -> list[int]:
    """VMM processes of this state dir: unjailed ones name their run dir on their command
    line; jailed ones (and their zygote) carry the zygote's, which names its socket."""
    markers = (os.fsencode(os.path.join(state_dir, "run") + "/"),
               os.fsencode(os.path.join(state_dir, "zygote.sock")))
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if any(m in cmd for m in markers):
                pids.append(int(d))
    return pids


def jail_run_dir(state_dir: str, vm_id: str) -> str:
    """A jailed VM's run dir: inside its jail, where the VMM sees it as /run."""
    return os.path.join(state_dir, "jail", vm_id, "root", "run")


class NodeServer:
    def __init__(self, state_dir: str, *extra: str):
        self.state_dir, self.extra = state_dir, list(extra)
        self.socket = os.path.join(state_dir, "s.sock")
        self.proc: subprocess.Popen | None = None
        self.channel = None

    def start(self, wait: bool = True) -> "NodeServer":
        cmd = [sys.executable, "-m", "nodesvc.server.main", "serve", "--state-dir",
               self.state_dir, "--socket", self.socket, "--vmm-metrics-interval", "0.3",
               "--log-level", "warning", *self.extra]
        self.log = open(os.path.join(self.state_dir, "server.log"), "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=self.log)
        if wait:
            self.wait_serving()
        return self

    def wait_serving(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"node service exited {self.proc.returncode}: "
                                     f"{self.log_text()}")
            if os.path.exists(self.socket):
                ch = grpc.insecure_channel(f"unix:{self.socket}")
                try:
                    r = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        self.channel = ch
                        self.stub = pb_grpc.NodeServiceStub(ch)
                        return
                except grpc.RpcError:
                    pass
                ch.close()
            time.sleep(0.05)
        raise AssertionError(f"node service not serving after {timeout}s: {self.log_text()}")

    def log_text(self) -> str:
        return Path(self.state_dir, "server.log").read_text(errors="replace")[-3000:]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def _kill_vmms(state_dir: str) -> None:
    for pid in vmm_pids(state_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def state_dir():
    # Short: Unix socket paths are limited to 107 bytes.
    d = tempfile.mkdtemp(prefix="nsvc-", dir="/tmp")
    yield d
    _kill_vmms(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_server(state_dir):
    servers: list[NodeServer] = []

    def make(*extra: str, wait: bool = True) -> NodeServer:
        s = NodeServer(state_dir, *extra)
        servers.append(s)
        return s.start(wait=wait)
    yield make
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def shared_server():
    """One server for tests that don't restart it (each uses its own VM ids)."""
    d = tempfile.mkdtemp(prefix="nsvc-", dir="/tmp")
    s = NodeServer(d).start()
    yield s
    s.stop()
    _kill_vmms(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def guest():
    """guest(name) -> path of a tiny test guest ELF (tests/guests)."""
    if not shutil.which(os.environ.get("GUEST_CC") or "gcc"):
        pytest.skip("gcc is not installed: cannot build the tiny guests")
    from tests.guests.build import build_guest
    return lambda name: str(build_guest(name))


def vm_spec(kernel: str, *, vcpus: int = 1, memory_mib: int = 32,
            boot_args: str = "idle=20000") -> pb.VmSpec:
    return pb.VmSpec(machine=pb.MachineConfig(vcpus=vcpus, memory_mib=memory_mib),
                     boot=pb.BootSource(kernel_path=kernel, boot_args=boot_args))


def wait_state(stub, vm_id: str, state: int, timeout: float = 5.0) -> pb.Vm:
    deadline = time.monotonic() + timeout
    while True:
        vm = stub.GetVm(pb.GetVmRequest(vm_id=vm_id)).vm
        if vm.state == state or time.monotonic() > deadline:
            assert pb.VmState.Name(vm.state) == pb.VmState.Name(state), vm.reason
            return vm
        time.sleep(0.01)


def read_console_until(stream, marker: bytes, timeout: float = 10.0) -> bytes:
    """Read a StreamConsole/AttachConsole response stream until `marker` shows up."""
    buf = b""
    deadline = time.monotonic() + timeout
    for msg in stream:
        buf += msg.data
        if marker in buf:
            return buf
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"{marker!r} not seen in console output {buf!r}")
