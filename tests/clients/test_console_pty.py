"""`nodectl console` on a real pseudo-terminal: raw mode, keystrokes to the guest (Ctrl-C
included), the Ctrl-] escape detaching without stopping the VM, the terminal restored."""

import os
import select
import subprocess
import sys
import termios
import time

import pytest

from nodesvc_client import pb
from tests.clients.conftest import spec_dict

pytestmark = pytest.mark.kvm


class Pty:
    """nodectl running on the slave side of a pty; we are the keyboard and the screen."""

    def __init__(self, *args: str):
        self.master, self.slave = os.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "nodesvc_client.cli", *args],
                                     stdin=self.slave, stdout=self.slave, stderr=self.slave,
                                     close_fds=True)
        self.screen = b""

    def expect(self, marker: bytes, timeout: float = 15.0) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.screen:
            left = deadline - time.monotonic()
            assert left > 0, f"{marker!r} not on screen: {self.screen!r}"
            if select.select([self.master], [], [], left)[0]:
                self.screen += os.read(self.master, 4096)
        return self.screen

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout: float = 15.0) -> int:
        rc = self.proc.wait(timeout)
        while select.select([self.master], [], [], 0.2)[0]:     # drain the screen
            try:
                self.screen += os.read(self.master, 4096)
            except OSError:
                break
        return rc

    def cooked(self) -> bool:
        lflag = termios.tcgetattr(self.slave)[3]
        return bool(lflag & termios.ICANON and lflag & termios.ECHO)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def echo_vm(client, guest):
    name = f"pty-{os.getpid()}-{time.monotonic_ns() % 100000}"
    client.create_vm(name, spec_dict(guest("echo"), boot_args="idle=60000"), start=True)
    yield name
    if client.get_vm(name).state == pb.VM_STATE_RUNNING:
        client.stop_vm(name, force=True)
    client.delete_vm(name)


@pytest.fixture
def console(shared_server):
    ptys = []

    def start(vm_id: str, *extra: str) -> Pty:
        ptys.append(Pty("--socket", shared_server.socket, "console", vm_id, *extra))
        return ptys[-1]
    yield start
    for p in ptys:
        p.close()


def test_type_see_echo_then_detach_leaves_the_vm_running(client, echo_vm, console):
    t = console(echo_vm)
    assert t.cooked()
    t.expect(b"Ctrl-] detaches")            # printed once the terminal is raw
    t.expect(b"READY")                      # the boot, from the console history
    assert not t.cooked()
    t.type(b"hello")
    t.expect(b"hello")                      # echoed by the guest: the pty's echo is off
    t.type(b"a\x03b")                       # Ctrl-C goes to the guest, nodectl stays
    t.expect(b"a\x03b")
    t.type(b"\x1d")                         # Ctrl-]
    assert t.wait() == 0, t.screen
    assert b"detached from VM " + echo_vm.encode() + b" is RUNNING" in t.screen
    assert t.cooked()                       # terminal restored
    assert client.get_vm(echo_vm).state == pb.VM_STATE_RUNNING


def test_console_ends_with_the_vm_and_restores_the_terminal(client, echo_vm, console):
    t = console(echo_vm, "--no-history")
    t.expect(b"detaches")
    t.type(b"q")                            # the echo guest says BYE and resets
    t.expect(b"BYE")
    assert t.wait() == 0, t.screen
    assert b"console closed: VM " + echo_vm.encode() + b" is STOPPED (guest-reset" in t.screen
    assert b"READY" not in t.screen and t.cooked()


def test_custom_escape_key(client, echo_vm, console):
    t = console(echo_vm, "--escape", "^x")
    t.expect(b"Ctrl-X detaches")
    t.type(b"<\x1d>")                       # Ctrl-] is an ordinary key now
    t.expect(b"<\x1d>")
    t.type(b"\x18")
    assert t.wait() == 0 and t.cooked()
    assert client.get_vm(echo_vm).state == pb.VM_STATE_RUNNING


def test_missing_vm_is_an_error_line(console):
    t = console("no-such-vm")
    assert t.wait() == 1
    assert b"nodectl: NOT_FOUND: no VM 'no-such-vm' on this node" in t.screen and t.cooked()
