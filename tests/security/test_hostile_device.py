"""A device model the guest took over, inside a jailed VMM started by a real node service.

The TEST-ONLY hostile device (plugins/test_hostile_device, enabled by NODESVC_TEST_PLUGINS=1)
attempts one forbidden act per command byte, which the `poke` tiny guest writes to its
port when the test types it on the console. Each act is either denied (the errno comes
back on the console, the VM runs on) or ends the VMM, and then the node reports FAILED
naming the syscall or the limit. After each: nothing on the host changed (the witnesses:
a directory, a sentinel process, TCP/Unix/abstract listeners, the mount table), the jail
is gone, and a bystander VM on the same node is still running in the same VMM process.
"""

from __future__ import annotations

import os
import threading
import time

import grpc
import pytest

from nodesvc.api.v1 import nodesvc_pb2 as pb
from tests.service.conftest import vm_spec, wait_state

pytestmark = [pytest.mark.jail, pytest.mark.kvm]
ST = pb.VmState
SECCOMP = "VMM killed by seccomp: forbidden syscall "

# command byte -> the FAILED reason the node must give
KILLED = {
    "o": SECCOMP + "openat",    # open (create) a host file, on a vCPU thread
    "e": SECCOMP + "execve",    # run a host binary
    "i": SECCOMP + "socket",    # socket(AF_INET), vCPU thread
    "I": SECCOMP + "socket",    # socket(AF_INET), event-loop thread (AF_UNIX only there)
    "p": SECCOMP + "ptrace",    # PTRACE_ATTACH to a host process
    "m": SECCOMP + "mount",     # mount a tmpfs over a host directory
    "k": SECCOMP + "kill",      # kill(host pid, SIGKILL)
    "f": SECCOMP + "clone",     # fork until past the pids limit: the first fork is fatal
    # threads until past the pids limit: a vCPU may make none. glibc blocks every signal
    # while it creates a thread, so the trap can't run the reporter: the kernel kills
    "T": "VMM process killed by signal SIGSYS (seccomp: a forbidden syscall made while "
         "SIGSYS was blocked, as glibc does when creating a thread, so its name was not "
         "recorded)",
}
# command byte -> errno on the console; the VM keeps running
DENIED = {
    "u": "ENOENT",          # connect to the node's gRPC socket: no such path in the jail
    "U": "ENOENT",          # connect to another host Unix socket
    "a": "ECONNREFUSED",    # an abstract Unix socket of the host: other network namespace
    "t": "ESRCH",           # tgkill(SIGABRT), which the filters allow: own PID namespace
}


class Console:
    """The VM's console output as it arrives, read on a thread."""

    def __init__(self, stub, vm_id: str):
        self.buf, self._lock = b"", threading.Lock()
        self.stream = stub.StreamConsole(pb.StreamConsoleRequest(
            vm_id=vm_id, include_history=True), timeout=60)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for msg in self.stream:
                with self._lock:
                    self.buf += msg.data
        except Exception:   # cancelled, or the VM ended
            pass

    def wait_for(self, marker: bytes, timeout: float = 20.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if marker in self.buf:
                    return self.buf
            time.sleep(0.01)
        raise AssertionError(f"{marker!r} not in console output {self.buf!r}")

    def close(self) -> None:
        self.stream.cancel()


def _type(stub, vm_id: str, data: bytes, *, fatal: bool = False) -> None:
    """Type `data` on the VM's console. `fatal`: the act ends the VMM, possibly before it
    answered the console input (the RPC then fails: the VMM closed its connection)."""
    stream = stub.AttachConsole(iter([pb.ConsoleInput(vm_id=vm_id, data=data)]), timeout=10)
    try:
        next(stream, None)      # the server has taken the input once it answers
    except grpc.RpcError as e:
        if not (fatal and e.code() == grpc.StatusCode.FAILED_PRECONDITION):
            raise
    finally:
        stream.cancel()


def _start_poke(s, guest, vm_id: str) -> tuple[pb.Vm, Console]:
    vm = s.stub.CreateVm(pb.CreateVmRequest(vm_id=vm_id, spec=vm_spec(
        guest("poke"), boot_args="idle=120000"), start=True), timeout=60).vm
    assert vm.state == ST.VM_STATE_RUNNING, vm.reason
    con = Console(s.stub, vm_id)
    con.wait_for(b"POKE READY")
    return vm, con


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def bystander(hostile_node, guest):
    vm, con = _start_poke(hostile_node, guest, "bystander")
    con.close()
    return vm


def _after(s, bystander, vm_id: str) -> None:
    assert s.witnesses.untouched() == []
    assert not os.path.exists(os.path.join(s.state_dir, "jail", vm_id))
    other = s.stub.GetVm(pb.GetVmRequest(vm_id="bystander")).vm
    assert other.state == ST.VM_STATE_RUNNING and other.vmm_pid == bystander.vmm_pid
    assert _alive(bystander.vmm_pid)


@pytest.mark.parametrize("cmd", sorted(KILLED))
def test_forbidden_act_kills_the_vmm_and_is_named(hostile_node, guest, bystander, cmd):
    s = hostile_node
    vm_id = f"act-{ord(cmd):x}"
    vm, con = _start_poke(s, guest, vm_id)
    _type(s.stub, vm_id, cmd.encode(), fatal=True)
    failed = wait_state(s.stub, vm_id, ST.VM_STATE_FAILED, timeout=20)
    con.close()
    assert failed.reason == KILLED[cmd]
    assert not _alive(vm.vmm_pid)
    _after(s, bystander, vm_id)
    s.stub.DeleteVm(pb.DeleteVmRequest(vm_id=vm_id))


def test_denied_acts_leave_the_vm_running(hostile_node, guest, bystander):
    s = hostile_node
    vm, con = _start_poke(s, guest, "denied")
    for cmd, err in DENIED.items():
        _type(s.stub, "denied", cmd.encode())
        out = con.wait_for(f"HOSTILE {cmd} ".encode())    # (loop acts answer late)
        out = con.wait_for(f"HOSTILE {cmd} DENIED {err}\n".encode())
    con.close()
    assert b"ALLOWED" not in out
    again = s.stub.GetVm(pb.GetVmRequest(vm_id="denied")).vm
    assert again.state == ST.VM_STATE_RUNNING and again.vmm_pid == vm.vmm_pid
    assert s.witnesses.untouched() == []
    s.stub.StopVm(pb.StopVmRequest(vm_id="denied", force=True), timeout=20)
    _after(s, bystander, "denied")
    s.stub.DeleteVm(pb.DeleteVmRequest(vm_id="denied"))


def test_memory_past_the_cgroup_limit_is_an_oom_kill_named_as_such(hostile_node, guest,
                                                                    bystander):
    s = hostile_node
    vm, con = _start_poke(s, guest, "hoarder")
    _type(s.stub, "hoarder", b"M", fatal=True)
    failed = wait_state(s.stub, "hoarder", ST.VM_STATE_FAILED, timeout=60)
    con.close()
    # 32 MiB guest + the node's 256 MiB VMM allowance (JailConfig.vmm_memory_mib)
    assert failed.reason == ("VMM killed by the cgroup memory limit (288 MiB: guest memory "
                             "+ 256 MiB for the VMM)")
    assert not _alive(vm.vmm_pid)
    _after(s, bystander, "hoarder")
    s.stub.DeleteVm(pb.DeleteVmRequest(vm_id="hoarder"))
