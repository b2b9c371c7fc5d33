"""`nodesvc-vmm` CLI: config errors exit 2 without touching KVM; the VM API is driven right."""

import os
import pty
import signal
import subprocess
import sys
import termios
import types
from pathlib import Path

import pytest

from nodesvc.vmm import cli
from nodesvc.vmm.errors import KvmError
from nodesvc.vmm.exits import ExitReason, VmExit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def kernel(tmp_path):
    p = tmp_path / "vmlinux"
    p.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57))   # enough for config validation
    return str(p)


@pytest.fixture
def no_vm(monkeypatch):
    """Any import of the VM or console module now fails loudly."""
    monkeypatch.setitem(sys.modules, "nodesvc.vmm.vm", None)
    monkeypatch.setitem(sys.modules, "nodesvc.vmm.console", None)


class FakeVm:
    instances: list = []
    result = VmExit(ExitReason.GUEST_SHUTDOWN)
    during_run = None

    def __init__(self, cfg, **kwargs):
        self.cfg, self.kwargs, self.stopped = cfg, kwargs, False
        FakeVm.instances.append(self)

    def run(self):
        if FakeVm.during_run:
            FakeVm.during_run(self)
        return FakeVm.result

    def stop(self, detail="stop requested"):
        self.stopped = detail


class FakeSink:
    def __init__(self, fd=1):
        self.fd, self.closed = fd, False

    def close(self):
        self.closed = True


@pytest.fixture
def fake_vm(monkeypatch):
    FakeVm.instances, FakeVm.result, FakeVm.during_run = [], VmExit(ExitReason.GUEST_SHUTDOWN), None
    monkeypatch.setitem(sys.modules, "nodesvc.vmm.vm", types.SimpleNamespace(MicroVm=FakeVm))
    monkeypatch.setitem(sys.modules, "nodesvc.vmm.console",
                        types.SimpleNamespace(StdoutSink=FakeSink))
    monkeypatch.setattr(cli, "console_input_fd", lambda fd=0: fd)  # whatever fd 0 is here
    return FakeVm


# --- config errors: exit 2, one line, no VM -------------------------------------------

def test_bad_config_file_exits_2(tmp_path, kernel, capsys, no_vm):
    f = tmp_path / "vm.json"
    f.write_text('{"boot-source": {"kernel_image_path": "%s"}, '
                 '"machine-config": {"vcpu_count": 0, "mem_size_mib": 128}}' % kernel)
    assert cli.main(["--config-file", str(f)]) == 2
    assert capsys.readouterr().err == \
        "nodesvc-vmm: error: machine-config.vcpu_count: must be between 1 and 32, got 0\n"


def test_bad_quick_flag_exits_2(kernel, capsys, no_vm):
    assert cli.main(["--kernel", kernel, "--mem-mib", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nodesvc-vmm: error: --mem-mib: must be at least 16 MiB")
    assert err.count("\n") == 1


def test_missing_kernel_exits_2(tmp_path, capsys, no_vm):
    assert cli.main(["--kernel", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == (f"nodesvc-vmm: error: --kernel: cannot read "
                                       f"{str(tmp_path / 'nope')!r}: No such file or directory\n")


def test_mixing_config_file_and_flags(tmp_path, kernel, capsys, no_vm):
    assert cli.main(["--config-file", "x.json", "--kernel", kernel, "--vcpus", "2"]) == 2
    assert capsys.readouterr().err == \
        "nodesvc-vmm: error: --config-file cannot be combined with --kernel, --vcpus\n"


def test_nothing_to_boot(capsys, no_vm):
    assert cli.main([]) == 2
    assert capsys.readouterr().err == \
        "nodesvc-vmm: error: either --config-file or --kernel is required\n"


def test_bad_vm_id(kernel, capsys, no_vm):
    assert cli.main(["--kernel", kernel, "--id", "../etc"]) == 2
    assert capsys.readouterr().err == \
        "nodesvc-vmm: error: --id: must be 1-64 letters, digits or '-', got '../etc'\n"


def test_argparse_errors_and_help(capsys, no_vm):
    assert cli.main(["--vcpus", "two"]) == 2
    assert "argument --vcpus: invalid int value: 'two'" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    assert "--config-file FILE" in capsys.readouterr().out


# --- --list-plugins --------------------------------------------------------------------

def test_list_plugins_format(monkeypatch, capsys, no_vm):
    from nodesvc import plugins

    class PM:
        def plugins(self):
            return [plugins.PluginInfo("builtin-devices", "nodesvc", "0.1.0"),
                    plugins.PluginInfo("extra", "(in-process)", "")]
    monkeypatch.setattr(plugins, "PluginManager", PM)
    assert cli.main(["--list-plugins"]) == 0
    assert capsys.readouterr().out == "builtin-devices\tnodesvc\t0.1.0\nextra\t(in-process)\t\n"


def test_list_plugins_subprocess():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "nodesvc.vmm.cli", "--list-plugins"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    for line in p.stdout.splitlines():
        assert len(line.split("\t")) == 3


# --- running the VM --------------------------------------------------------------------

def test_runs_vm_and_maps_exit_code(kernel, capsys, fake_vm):
    fake_vm.result = VmExit(ExitReason.TRIPLE_FAULT, vcpu=0)
    assert cli.main(["--kernel", kernel, "--vcpus", "2", "--id", "web-1"]) == 3
    vm = fake_vm.instances[0]
    assert vm.cfg.machine_config.vcpu_count == 2
    assert vm.kwargs["vm_id"] == "web-1"
    assert vm.kwargs["console_in_fd"] == 0
    assert vm.kwargs["console_escape"] is False          # stdin is not a tty under pytest
    assert isinstance(vm.kwargs["console_out"], FakeSink) and vm.kwargs["console_out"].closed
    assert capsys.readouterr().err == "nodesvc-vmm: web-1 exited: triple-fault on vCPU 0\n"


def test_no_console_input(kernel, fake_vm):
    assert cli.main(["--kernel", kernel, "--no-console-input"]) == 0
    assert fake_vm.instances[0].kwargs["console_in_fd"] is None


def test_tty_gets_raw_mode_and_escape(kernel, fake_vm, monkeypatch):
    entered = []

    class Raw:
        def __init__(self, fd):
            entered.append(fd)

        def __enter__(self):
            return True

        def __exit__(self, *exc):
            entered.append("restored")
    monkeypatch.setattr(cli.os, "isatty", lambda fd: True)
    monkeypatch.setattr(cli, "raw_terminal", Raw)
    assert cli.main(["--kernel", kernel]) == 0
    assert entered == [0, "restored"]
    assert fake_vm.instances[0].kwargs["console_escape"] is True


def test_sigterm_stops_vm(kernel, fake_vm, capsys):
    before = signal.getsignal(signal.SIGTERM)

    def run(vm):
        os.kill(os.getpid(), signal.SIGTERM)
        assert vm.stopped == "received SIGTERM"
        fake_vm.result = VmExit(ExitReason.STOPPED, vm.stopped)
    fake_vm.during_run = run
    assert cli.main(["--kernel", kernel]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
    assert capsys.readouterr().err.endswith("vm0 exited: stopped: received SIGTERM\n")


def test_vmm_error_exits_1(kernel, fake_vm, capsys):
    def boom(vm):
        raise KvmError("KVM_CREATE_VM", 24, "Too many open files")
    fake_vm.during_run = boom
    assert cli.main(["--kernel", kernel]) == 1
    assert capsys.readouterr().err == \
        "nodesvc-vmm: error: KVM_CREATE_VM failed: [errno 24] Too many open files\n"


# --- console input fd and raw_terminal ----------------------------------------------------------------------

def test_console_input_fd(tmp_path):
    r, w = os.pipe()
    try:
        assert cli.console_input_fd(r) == r
    finally:
        os.close(r)
        os.close(w)
    assert cli.console_input_fd(r) is None                  # closed fd
    with open(tmp_path / "f", "w") as f:                   # epoll refuses regular files
        assert cli.console_input_fd(f.fileno()) is None
    with open("/dev/null") as f:                           # `nodesvc-vmm ... </dev/null`
        assert cli.console_input_fd(f.fileno()) is None


def test_raw_terminal_restores_even_on_error():
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        with pytest.raises(RuntimeError):
            with cli.raw_terminal(slave) as raw:
                assert raw is True
                lflag = termios.tcgetattr(slave)[3]
                assert not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)
                raise RuntimeError("guest blew up")
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_raw_terminal_on_non_tty_is_noop(tmp_path):
    with open(tmp_path / "f", "w") as f:
        with cli.raw_terminal(f.fileno()) as raw:
            assert raw is False
