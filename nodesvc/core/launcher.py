"""How the node service starts a VMM: jailed through the zygote (the default), or as a
plain child process (`--no-jail`, a developer option).

Jailed, the node opens every host file the VM needs — kernel, initrd, drives, TAPs
(attached in their network namespace) — and hands the descriptors to the zygote with the
spawn request; the jailed VMM never resolves a host path. Its run dir (control socket,
FIFOs, exit file) is `<jail base>/<vm id>/root/run`, which the VMM sees as `/run`. A
vsock socket is made by the VMM in that run dir and linked from the path the spec names.
When the VMM is gone the node reads the jail's fault record (the forbidden syscall, if
seccomp ended it) and removes everything the jail made.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

from ..net.tap import open_tap
from ..vmm import control, hostfiles
from .supervisor import RunPaths, spawn_vmm, vmm_command

log = logging.getLogger("nodesvc.core.launcher")
ZYGOTE_START_TIMEOUT = 60.0
VSOCK_IN_JAIL = "/run/vsock.sock"


class LaunchError(OSError):
    pass


@dataclass
class JailConfig:
    base_dir: str
    uid_range: tuple[int, int] = (900_000, 999_999)
    #: None: "nodesvc/<hash of base_dir>", so two node services on one host (tests, a
    #: fleet on one machine) never share a VM's cgroup
    parent_cgroup: str | None = None
    #: the VMM's own memory on top of the guest's (Python, page tables, buffers)
    vmm_memory_mib: int = 256
    #: threads beyond one per vCPU: event loop, VM waiter, boot watch, console
    extra_pids: int = 12
    #: CPU bandwidth beyond one CPU per vCPU (the event loop and control thread); None:
    #: no CPU limit
    vmm_cpus: float | None = 0.5

    def __post_init__(self) -> None:
        if self.parent_cgroup is None:
            digest = hashlib.sha256(os.path.abspath(self.base_dir).encode()).hexdigest()
            self.parent_cgroup = f"nodesvc/{digest[:10]}"

    @property
    def uid_state_dir(self) -> str:
        return os.path.join(self.base_dir, ".uids")


class ExecLauncher:
    """Unjailed: `python -m nodesvc.vmm.process` as the node's child (developers only)."""
    jailed = False

    def __init__(self, store, *, metrics_interval: float, log_level: str,
                 command=None, spawn=spawn_vmm):
        self.store, self.command, self.spawn = store, command, spawn
        self.metrics_interval, self.log_level = metrics_interval, log_level

    async def open(self) -> None:
        log.warning("VMMs run UNJAILED (--no-jail): as root, with every capability, no "
                    "seccomp, in the host's namespaces. For development only.")

    def close(self) -> None:
        pass

    def paths(self, vm_id: str) -> RunPaths:
        return RunPaths(self.store.run_dir(vm_id))

    def prepare(self, vm_id: str, paths: RunPaths, fc: dict) -> None:
        paths.prepare(fc)

    async def launch(self, vm_id: str, paths: RunPaths, fc: dict):
        """(pid, Popen or None)."""
        cmd = (self.command or vmm_command)(
            vm_id, paths, **({} if self.command else {
                "metrics_interval": self.metrics_interval, "log_level": self.log_level}))
        popen = self.spawn(cmd, stderr_path=paths.stderr, cwd=paths.run_dir)
        return popen.pid, popen

    def gone(self, vm_id: str) -> str | None:
        """After the VMM ended: why, if the launcher knows better than the VMM said."""
        return None

    def sweep(self, live: set[str]) -> None:
        pass


class ZygoteLauncher:
    """Jailed VMMs, forked by a supervised zygote (nodesvc.vmm.zygote)."""
    jailed = True

    def __init__(self, state_dir: str, jail: JailConfig, *, metrics_interval: float,
                 log_level: str, python: str = sys.executable):
        self.jail, self.python = jail, python
        self.metrics_interval, self.log_level = metrics_interval, log_level
        self.socket_path = os.path.join(state_dir, "zygote.sock")
        self.log_path = os.path.join(state_dir, "zygote.log")
        self.proc: subprocess.Popen | None = None
        self._lock = asyncio.Lock()

    # -- the zygote ---------------------------------------------------------------------------
    async def open(self) -> None:
        os.makedirs(self.jail.base_dir, mode=0o711, exist_ok=True)
        # The zygote clones each VMM as the node's own child (CLONE_PARENT); where it
        # cannot, the VMM's first parent exits once the VMM is pid 1 of its namespace and,
        # as their subreaper, the node inherits them. Either way it reaps every VMM.
        from nodesvc_jailer import linux
        linux.prctl(linux.PR_SET_CHILD_SUBREAPER, 1)
        await self._ensure_zygote()

    async def _ensure_zygote(self) -> None:
        """Start the zygote, or start it again if it died (supervision on use)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.proc is not None:
            log.error("zygote %d died (status %s); starting a new one", self.proc.pid,
                      self.proc.returncode)
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(
                [self.python, "-m", "nodesvc.vmm.zygote", "--socket", self.socket_path],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ZYGOTE_START_TIMEOUT
        while loop.time() < deadline:
            if self.proc.poll() is not None:
                raise LaunchError(f"the zygote exited with status {self.proc.returncode}; "
                                  f"see {self.log_path}")
            if await loop.run_in_executor(None, self._answers):
                return
            await asyncio.sleep(0.02)
        raise LaunchError(f"the zygote did not answer within {ZYGOTE_START_TIMEOUT:.0f} s")

    def _answers(self) -> bool:
        try:
            with control.ShortPath(self.socket_path) as p, \
                    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(p)
            return True
        except OSError:
            return False

    def close(self) -> None:
        """Stop the zygote; the VMMs it forked live on (re-adopted by the next node)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._remove_parent_cgroup()

    def _remove_parent_cgroup(self) -> None:
        """This node's parent cgroup, in every hierarchy, once no VM's cgroup is left in it
        (rmdir refuses a cgroup with children: re-adoptable VMs keep it)."""
        from nodesvc_jailer import cgroup as cg
        for _, mount, _ in cg.read_mounts():
            path = os.path.join(mount, self.jail.parent_cgroup)
            try:
                os.rmdir(path)
            except OSError:
                pass

    # -- one VM -------------------------------------------------------------------------------
    def paths(self, vm_id: str) -> RunPaths:
        return RunPaths(os.path.join(self.jail.base_dir, vm_id, "root", "run"))

    def prepare(self, vm_id: str, paths: RunPaths, fc: dict) -> None:
        self._cleanup(vm_id)        # a previous run's jail, if its node died first
        paths.prepare(fc)

    async def launch(self, vm_id: str, paths: RunPaths, fc: dict):
        async with self._lock:
            await self._ensure_zygote()
            loop = asyncio.get_running_loop()
            pid = await loop.run_in_executor(None, self._launch, vm_id, paths, fc)
        return pid, None

    def _launch(self, vm_id: str, paths: RunPaths, fc: dict) -> int:
        keys, fds = [], []
        try:
            fds.append(os.open(paths.stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND
                               | os.O_CLOEXEC, 0o600))
            for key, fd in _host_files(fc):
                keys.append(key)
                fds.append(fd)
            relocate = []
            if fc.get("vsock"):
                link_vsock(fc["vsock"]["uds_path"], paths.run_dir)
                relocate.append((fc["vsock"]["uds_path"], VSOCK_IN_JAIL))
            req = {"vm_id": vm_id, "config": fc, "files": keys,
                   "argv": self._argv(vm_id, paths), "exit_file_host": paths.exit_file,
                   "jail": self._jail_args(fc, relocate)}
            return self._request(req, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _argv(self, vm_id: str, paths: RunPaths) -> list[str]:
        return ["--id", vm_id, "--config-file", "-", "--control-socket", paths.control,
                "--console-fifo", paths.console, "--log-fifo", paths.log,
                "--metrics-fifo", paths.metrics, "--exit-file", "/run/exit.json",
                "--metrics-interval", str(self.metrics_interval), "--log-level", self.log_level]

    def _jail_args(self, fc: dict, relocate: list) -> dict:
        m = fc.get("machine-config") or {}
        vcpus, mem = m.get("vcpu_count", 1), m.get("mem_size_mib", 128)
        j = self.jail
        return {"base_dir": j.base_dir, "uid_state_dir": j.uid_state_dir,
                "uid_range": list(j.uid_range), "parent_cgroup": j.parent_cgroup,
                "memory_bytes": (mem + j.vmm_memory_mib) << 20,
                "cpus": None if j.vmm_cpus is None else vcpus + j.vmm_cpus,
                "pids": vcpus + j.extra_pids, "relocate": relocate}

    def _request(self, req: dict, fds: list[int]) -> int:
        from nodesvc_jailer.fdpass import send_fds
        with control.ShortPath(self.socket_path) as p, \
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(30.0)
            s.connect(p)
            send_fds(s, json.dumps(req).encode(), fds)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        msg = json.loads(reply or b"{}")
        if "error" in msg and "pid" in msg:     # our child, dead before its jail was ready
            _, status = os.waitpid(int(msg["pid"]), 0)
            raise LaunchError(f"{msg['error']} (status {os.waitstatus_to_exitcode(status)})")
        if "pid" not in msg:
            raise LaunchError(msg.get("error") or "the zygote gave no answer")
        return int(msg["pid"])

    def gone(self, vm_id: str) -> str | None:
        """The VMM is gone: the forbidden syscall or the cgroup memory limit that ended
        it, if either did; then remove its jail (cgroup, directory, uid)."""
        from nodesvc_jailer import fault_syscall, memory_limit_hit
        name = fault_syscall(vm_id, self.jail.base_dir)
        limit = None if name else memory_limit_hit(vm_id, self.jail.base_dir)
        self._cleanup(vm_id)
        if name:
            return f"VMM killed by seccomp: forbidden syscall {name}"
        if limit is not None:   # the OOM killer's SIGKILL: say which limit it enforced
            return (f"VMM killed by the cgroup memory limit ({limit >> 20} MiB: guest memory "
                    f"+ {self.jail.vmm_memory_mib} MiB for the VMM)")
        return None

    def _cleanup(self, vm_id: str) -> None:
        from nodesvc_jailer import cleanup
        left = cleanup(vm_id, self.jail.base_dir, uid_state_dir=self.jail.uid_state_dir,
                       parent_cgroup=self.jail.parent_cgroup)
        if left:
            log.error("%s: jail not fully removed: %s", vm_id, left)

    def sweep(self, live: set[str]) -> None:
        """At start-up: remove the jails of VMs that are not running any more."""
        from nodesvc_jailer import sweep
        sweep(self.jail.base_dir, live=live, uid_state_dir=self.jail.uid_state_dir,
              parent_cgroup=self.jail.parent_cgroup)


def _host_files(fc: dict):
    """(key, fd) for every host file the VM's config names, opened here, by the node."""
    bs = fc.get("boot-source") or {}
    for key in (bs.get("kernel_image_path"), bs.get("initrd_path")):
        if key:
            yield key, os.open(key, os.O_RDONLY | os.O_CLOEXEC)
    for d in fc.get("drives") or ():
        ro = bool(d.get("is_read_only"))
        yield d["path_on_host"], os.open(d["path_on_host"],
                                         (os.O_RDONLY if ro else os.O_RDWR) | os.O_CLOEXEC)
    for n in fc.get("network-interfaces") or ():
        tap = open_tap(n["host_dev_name"], n.get("netns"))
        yield hostfiles.tap_key(n.get("netns"), n["host_dev_name"]), tap.fd


def link_vsock(uds_path: str, run_dir: str) -> None:
    """The spec's socket path becomes a link to the socket the jailed VMM makes."""
    target = os.path.join(run_dir, os.path.basename(VSOCK_IN_JAIL))
    try:
        if os.path.islink(uds_path) or os.path.exists(uds_path):
            os.unlink(uds_path)
    except FileNotFoundError:
        pass
    os.symlink(target, uds_path)
