"""Supervision of one VMM process: spawn or re-adopt it, talk to it, read its FIFOs, and
notice at once when it ends.

Exit detection uses a pidfd (readable the moment the process exits), which works for our
own children and for processes re-adopted after a node service restart alike. The FIFOs
are read by fifos.FifoReaders.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

from ..vmm import actions, control
from .fanout import Fanout
from .fifos import FifoReaders
from .vmm_client import ControlClient

log = logging.getLogger("nodesvc.core.supervisor")
CONNECT_TIMEOUT = 15.0      # spawn -> control socket answering (Python start-up + imports)


@dataclass(frozen=True)
class RunPaths:
    """The files of one VMM run, all in the VM's run dir (removed when the VMM ends)."""
    run_dir: str

    def __getattr__(self, name: str) -> str:
        files = {"config": "config.json", "control": "control.sock", "console": "console.fifo",
                 "log": "log.fifo", "metrics": "metrics.fifo", "exit_file": "exit.json",
                 "stderr": "vmm.stderr"}
        if name not in files:
            raise AttributeError(name)
        return os.path.join(self.run_dir, files[name])

    def prepare(self, fc_config: dict) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)     # leftovers of a dead run
        os.makedirs(self.run_dir, mode=0o700)
        with open(self.config, "w") as f:
            json.dump(fc_config, f, indent=1)
        for fifo in (self.console, self.log, self.metrics):
            os.mkfifo(fifo, 0o600)

    def remove(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)


def vmm_command(vm_id: str, paths: RunPaths, *, metrics_interval: float = 10.0,
                log_level: str = "info", python: str = sys.executable) -> list[str]:
    """The VMM process command line. The jailer, when used, wraps this list."""
    return [python, "-m", "nodesvc.vmm.process", "--id", vm_id,
            "--config-file", paths.config, "--control-socket", paths.control,
            "--console-fifo", paths.console, "--log-fifo", paths.log,
            "--metrics-fifo", paths.metrics, "--exit-file", paths.exit_file,
            "--metrics-interval", str(metrics_interval), "--log-level", log_level]


def spawn_vmm(cmd: list[str], *, stderr_path: str, cwd: str | None = None,
              env: dict | None = None) -> subprocess.Popen:
    """Start a VMM (or a jailer wrapping one) that outlives the node service.

    Own session: a signal to the node service's process group (Ctrl-C, a service manager
    stopping it) does not reach the VMs. No pipes to us: a dead node service can't make
    the VMM block or die on a write. stdout/stderr go to a file kept for failure reasons.
    """
    with open(stderr_path, "ab") as err:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                cwd=cwd, env=env, close_fds=True, start_new_session=True)


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot); None if there's no such
    process or it is a zombie (dead, just not reaped by its new parent yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()    # comm may contain spaces and ')'
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return " | ".join(ln.strip() for ln in text.strip().splitlines()[-lines:] if ln.strip())


@dataclass(frozen=True)
class ExitInfo:
    failed: bool
    reason: str
    ran: bool = False   # the guest ran (so a VM still STARTING passes through RUNNING)


class VmmHandle:
    """One live VMM process. `on_exit(ExitInfo)` is called once, after cleanup."""

    def __init__(self, vm_id: str, paths: RunPaths, pid: int, *, console: Fanout,
                 logs: Fanout, on_exit: Callable[["VmmHandle", ExitInfo], None],
                 popen: subprocess.Popen | None = None, tracing=None,
                 on_gone: Callable[[], str | None] | None = None):
        self.vm_id, self.paths, self.pid, self.popen = vm_id, paths, pid, popen
        # called once the process is gone: the jail's reason (a forbidden syscall), if any,
        # after which the jail is removed
        self.on_gone = on_gone
        self.tracing = tracing      # nodesvc.tracing.Tracing, for spans the VMM sends late
        self.boot_time: float | None = None     # seconds, when a boot-timer device fired
        self.console, self.logs, self.on_exit = console, logs, on_exit
        self.start_time = process_start_time(pid) or 0
        self.client: ControlClient | None = None
        self.vmm_state: str | None = None   # as the hello reported it
        self.actions: frozenset[str] = frozenset()  # what the VMM implements (its hello)
        self.started = False                # the VMM acknowledged `start`
        self.stop_requested: str | None = None   # why we are ending it, if we are
        self.fail_reason: str | None = None      # we are killing it because it misbehaved
        self.exit_event: dict | None = None
        self.done = asyncio.get_running_loop().create_future()
        self._loop = asyncio.get_running_loop()
        self.fifos = FifoReaders(self._loop, paths, console, logs)
        self._pidfd: int | None = None
        self._finished = False
        self._draining = False

    # -- setting up -----------------------------------------------------------------------
    def watch(self) -> None:
        """Open the FIFOs and the pidfd; from now on an exit is noticed at once."""
        self.fifos.open()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._loop.call_soon(self._process_gone)
            return
        self._loop.add_reader(self._pidfd, self._process_gone)

    async def connect(self, timeout: float = CONNECT_TIMEOUT) -> bool:
        """Connect to the control socket; False if the process ended or never answered."""
        deadline = self._loop.time() + timeout
        while not self.done.done() and self._loop.time() < deadline:
            try:
                self.client = await ControlClient.connect(self.paths.control,
                                                          on_event=self._on_event)
                hello = await self.client.hello(timeout=max(0.1, deadline - self._loop.time()))
            except (OSError, asyncio.TimeoutError, actions.ActionError):
                if self.client is not None:
                    self.client.close()
                    self.client = None
                await asyncio.sleep(0.01)
                continue
            if hello.get("vm_id") != self.vm_id:
                self.client.close()
                self.client = None
                log.error("%s: control socket answered as %r", self.vm_id, hello.get("vm_id"))
                return False
            self.started = hello.get("state") in (control.RUNNING, control.PAUSED)
            self.vmm_state = hello.get("state")
            listed = hello.get("actions")
            self.actions = (frozenset(a for a in listed if isinstance(a, str))
                            if isinstance(listed, list) else actions.PROTOCOL_1_ACTIONS)
            return True
        return False

    # -- talking ----------------------------------------------------------------------------
    def supports(self, action: type[actions.Action]) -> bool:
        """Whether this VMM implements `action` (as its hello said)."""
        return action.name in self.actions

    async def call(self, action: actions.Action, timeout: float = 10.0,
                   trace: str | None = None, files: dict | None = None):
        """Run a typed action in the VMM; its typed result, or an `actions.ActionError`.
        `files` ({key: fd}) travel with it as SCM_RIGHTS (the caller keeps its fds)."""
        if self.client is None or self.done.done():
            raise actions.Failed(f"the VMM process of {self.vm_id} is not reachable")
        if not self.supports(type(action)):
            raise actions.Unsupported(f"the VMM process of {self.vm_id} does not implement "
                                      f"{action.name}")
        return await self.client.call(action, timeout=timeout, trace=trace, files=files)

    def _on_event(self, msg: dict) -> None:
        if msg.get("event") == "exited":
            self.exit_event = msg
        elif msg.get("event") == "boot-timer":
            self.boot_time = msg.get("boot_time")
            if self.tracing is not None:
                self.tracing.late_spans(msg)
        elif msg.get("event") is None:     # the control connection ended
            if not self.done.done():
                # Normally the pidfd fires first; a VMM that hangs up but lives is broken.
                self._loop.call_later(2.0, self._kill_if_alive, "closed its control socket")

    def _kill_if_alive(self, why: str) -> None:
        if not self._finished:
            log.error("%s: VMM process %d %s; killing it", self.vm_id, self.pid, why)
            self.kill()

    def kill(self) -> None:
        if self._finished:
            return
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # -- the end ----------------------------------------------------------------------------
    def _process_gone(self) -> None:
        if self._finished:
            return
        c = self.client
        if c is not None and not c.closed and not self._draining:
            # The pidfd can fire before the control socket's last lines are read: a VMM
            # whose guest ends at once (hello resets) answers `start`, then exits. Let
            # the reader reach EOF first, so that answer is not lost to the teardown.
            self._draining = True
            if self._pidfd is not None:
                self._loop.remove_reader(self._pidfd)
            asyncio.ensure_future(self._gone_after_reading(c))
            return
        self._finished = True
        returncode = self.popen.poll() if self.popen is not None else None
        if self.popen is not None and returncode is None:   # pidfd fired: reap it
            try:
                returncode = self.popen.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        elif self.popen is None and self._pidfd is not None:
            returncode = _reap(self._pidfd)
        self.fifos.drain()      # the last words are still in the pipes
        info = self._classify(returncode)
        jail_reason = self.on_gone() if self.on_gone is not None else None
        if jail_reason:
            info = ExitInfo(True, jail_reason, info.ran)
        self._release()
        self.paths.remove()
        self.console.close()
        self.logs.close()
        if not self.done.done():
            self.done.set_result(info)
        self.on_exit(self, info)

    async def _gone_after_reading(self, c: ControlClient) -> None:
        await asyncio.wait([c.read_done], timeout=0.5)  # EOF: the process is gone
        self._process_gone()

    def _classify(self, returncode: int | None) -> ExitInfo:
        ev = self.exit_event or read_json(self.paths.exit_file)
        ran = self.started or bool(ev and ev.get("ran"))
        if self.fail_reason:
            return ExitInfo(True, self.fail_reason, ran)
        if ev and ev.get("reason"):
            reason = ev["reason"] + (f": {ev['detail']}" if ev.get("detail") else "")
            if self.stop_requested and ev["reason"] == "stopped":
                reason = self.stop_requested
            return ExitInfo(bool(ev.get("failure")), reason, ran)
        if self.stop_requested:
            return ExitInfo(False, self.stop_requested, ran)
        if returncode is not None and returncode < 0:
            name = signal.Signals(-returncode).name
            if returncode == -signal.SIGSYS:    # seccomp's trap could not be reported
                name += (" (seccomp: a forbidden syscall made while SIGSYS was blocked, as "
                         "glibc does when creating a thread, so its name was not recorded)")
            return ExitInfo(True, f"VMM process killed by signal {name}", ran)
        tail = _tail(self.paths.stderr)
        if returncode is not None:
            return ExitInfo(returncode != 0, f"VMM process exited with status {returncode}"
                                             + (f": {tail}" if tail else ""), ran)
        # Not our child (re-adopted after a node restart): its exit status is unknown.
        return ExitInfo(True, "VMM process ended without reporting why (killed or crashed)"
                        + (f": {tail}" if tail else ""), ran)

    def _release(self) -> None:
        self.fifos.close()
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self.client is not None:
            self.client.close()
            self.client = None

    def detach(self) -> None:
        """Let go without touching the process (node service shutting down)."""
        if not self._finished:
            self._finished = True
            self._release()
            self.console.close()
            self.logs.close()


def _reap(pidfd: int) -> int | None:
    """The exit status of a process that is our child without a Popen (a jailed VMM: the
    node is their subreaper); None if it is not our child (re-adopted after a restart)."""
    try:
        res = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
    except (ChildProcessError, OSError):
        return None
    if res is None:
        return None
    return -res.si_status if res.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else res.si_status


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            v = json.load(f)
        return v if isinstance(v, dict) else None
    except (OSError, ValueError):
        return None
