"""Exec mode (`--jail-mode exec`): each VMM is a fresh `nodesvc-jailer ... -- python -m
nodesvc.vmm.process --jailed` — a new process image per VM, so a new address-space layout
(ASLR) per VM, where the zygote's forks all share the zygote's. The price is Python's
start-up and every import on each VM start, and no memory shared between VMMs (the
figures are in docs/security.md).

The jail is the one the zygote's children get (nodesvc_jailer.Jail via its CLI): the same
namespaces (a new, empty network namespace included), cgroup limits, uid range, rlimits,
no capabilities; the VMM loads the same seccomp filters itself, before any guest code, as
Firecracker does after its jailer execs it. One difference: the root also holds what a
fresh interpreter needs to start, bound read-only — the Python runtime (`sys.base_prefix`),
the venv (`sys.prefix`), the source dirs of nodesvc, the jailer and the plugins, the
dynamic loader's libraries, /etc/ld.so.cache, /sbin/ldconfig and /dev/null (ctypes'
find_library runs `ldconfig -p`).

Host files never cross as paths: the node opens the kernel, initrd, drives and TAPs (as in
zygote mode), plus the run dir's FIFOs and the seccomp fault file (both root's), and the
VMM inherits the descriptors (`--hostfile KEY=FD`); its config comes on stdin. The jailer
stays as the VMM's unprivileged parent ("relay": it mirrors the VMM's exit status, and the
VMM gets SIGKILL if it dies), so the node's Popen is the relay and its pidfd watches the
VMM, whose pid the jailer writes to a pipe (`--pid-fd`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import subprocess
import sys

from ..vmm.config import host_mem_total
from .launcher import (VSOCK_IN_JAIL, JailConfig, LaunchError, ZygoteLauncher, _host_files,
                       link_vsock)
from .supervisor import RunPaths, _tail

log = logging.getLogger("nodesvc.core.exec_jail")
PID_TIMEOUT = 30.0
# What the dynamic loader and ctypes.util.find_library need in the jail (see module doc).
SYSTEM_BINDS = ("/lib", "/lib64", "/etc/ld.so.cache", "/sbin/ldconfig", "/dev/null")
# Run in the VMM's Python once, unjailed, at open(): which source dirs its imports come from
# (editable installs live outside the prefixes; plugins are found through entry points).
_ROOTS_PROBE = """
import os, sys
import nodesvc.vmm.zygote as z
z.warm_up()
prefixes = [os.path.realpath(p) + "/" for p in (sys.prefix, sys.base_prefix)]
roots = set()
for name, m in list(sys.modules.items()):
    f = getattr(m, "__file__", None)
    if not f or name == "__main__" or os.path.realpath(f).startswith(tuple(prefixes)):
        continue
    top = sys.modules.get(name.partition(".")[0])
    for p in getattr(top, "__path__", None) or [top.__file__]:
        roots.add(os.path.realpath(p))
print("\\n".join(sorted(roots)))
"""


class ExecJailLauncher(ZygoteLauncher):
    """Jailed VMMs, each exec'd by nodesvc-jailer. Paths, cleanup, fault reasons and the
    start-up sweep are the zygote launcher's (same jail layout); only starting differs."""
    jailed = True

    def __init__(self, state_dir: str, jail: JailConfig, *, metrics_interval: float,
                 log_level: str, python: str = sys.executable):
        self.jail, self.python = jail, python
        self.metrics_interval, self.log_level = metrics_interval, log_level
        self.binds: list[str] = []
        self.nested_pvm = False
        self.host_mem = host_mem_total()

    async def open(self) -> None:
        os.makedirs(self.jail.base_dir, mode=0o711, exist_ok=True)
        from ..vmm.cmdline import host_is_nested_pvm
        self.nested_pvm = host_is_nested_pvm()
        loop = asyncio.get_running_loop()
        self.binds = await loop.run_in_executor(None, self._binds)
        log.info("exec jail mode: %d read-only binds per VM (%s)", len(self.binds),
                 ", ".join(self.binds))

    def _binds(self) -> list[str]:
        r = subprocess.run([self.python, "-I", "-c", _ROOTS_PROBE], capture_output=True,
                           text=True, timeout=120, cwd="/", env=vmm_env())
        if r.returncode != 0:
            raise LaunchError(f"cannot list the VMM's source dirs: {r.stderr.strip()[-500:]}")
        prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)}
        roots = [p for p in r.stdout.split() if p]
        return [*(p for p in SYSTEM_BINDS if os.path.exists(p)), *sorted(prefixes), *roots]

    def close(self) -> None:
        pass    # nothing of ours outlives a VM but the VM's own relay and VMM

    async def launch(self, vm_id: str, paths: RunPaths, fc: dict):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._launch, vm_id, paths, fc)

    def _launch(self, vm_id: str, paths: RunPaths, fc: dict):
        fds: dict[str, int] = {}    # hostfile key -> fd (closed here once the child has them)
        extra: list[int] = []
        pid_r = None
        try:
            for key, fd in _host_files(fc):
                fds[key] = fd
            for fifo in (paths.console, paths.log, paths.metrics):
                fds[_inside(paths, fifo)] = os.open(fifo, os.O_RDWR | os.O_NONBLOCK
                                                    | os.O_CLOEXEC)
            jail_dir = os.path.join(self.jail.base_dir, vm_id)
            fault = os.open(os.path.join(jail_dir, "fault"),
                            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            config = os.open(paths.config, os.O_RDONLY | os.O_CLOEXEC)
            pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
            extra += [fault, config, pid_w]
            relocate = []
            if fc.get("vsock"):
                link_vsock(fc["vsock"]["uds_path"], paths.run_dir)
                relocate.append((fc["vsock"]["uds_path"], VSOCK_IN_JAIL))
            cmd = self.command(vm_id, fc, fds, relocate, fault, pid_w)
            with open(paths.stderr, "ab") as err:
                popen = subprocess.Popen(
                    cmd, stdin=config, stdout=err, stderr=err, cwd="/",
                    pass_fds=(*fds.values(), fault, pid_w), start_new_session=True, env={})
            for fd in extra:
                os.close(fd)
            extra = []
            pid = _read_pid(pid_r, popen)
            if pid is None:
                try:
                    code = popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    popen.kill()
                    code = popen.wait()
                tail = _tail(paths.stderr)
                raise LaunchError(f"nodesvc-jailer exited with status {code} before the "
                                  f"VMM ran" + (f": {tail}" if tail else ""))
            return pid, popen
        finally:
            for fd in (*fds.values(), *extra, *(() if pid_r is None else (pid_r,))):
                os.close(fd)

    def command(self, vm_id: str, fc: dict, fds: dict[str, int], relocate: list,
                fault: int, pid_fd: int) -> list[str]:
        """nodesvc-jailer's flags (Firecracker's where they exist), then the VMM's."""
        args = self._jail_args(fc, relocate)
        first, last = self.jail.uid_range
        cmd = [self.python, "-I", "-m", "nodesvc_jailer.cli", "--id", vm_id,
               "--chroot-base-dir", self.jail.base_dir,
               "--uid-state-dir", self.jail.uid_state_dir, "--uid-range", f"{first}-{last}",
               "--parent-cgroup", self.jail.parent_cgroup,
               "--memory-mib", str(args["memory_bytes"] >> 20), "--pids", str(args["pids"]),
               "--new-pid-ns", "--new-netns", "--pid-fd", str(pid_fd)]
        if args["cpus"] is not None:
            cmd += ["--cpus", str(args["cpus"])]
        for b in self.binds:
            cmd += ["--ro-bind", b]
        for name, value in vmm_env().items():
            cmd += ["--env", f"{name}={value}"]
        for fd in (*fds.values(), fault):
            cmd += ["--keep-fd", str(fd)]
        cmd += ["--", self.python, "-I", "-m", "nodesvc.vmm.process", "--jailed",
                *self._argv(vm_id, RunPaths("/run")), "--seccomp-fault-fd", str(fault),
                "--nested-pvm", str(int(self.nested_pvm))]
        if self.host_mem:
            cmd += ["--host-mem-bytes", str(self.host_mem)]
        for key, fd in fds.items():
            cmd += ["--hostfile", f"{key}={fd}"]
        for host, inside in relocate:
            cmd += ["--relocate", f"{host}={inside}"]
        return cmd


def vmm_env() -> dict[str, str]:
    """What of the node's environment the VMM sees: nodesvc's own settings (a zygote's
    fork inherits them all; the jailer passes only these), e.g. the plugin block list."""
    return {k: v for k, v in os.environ.items() if k.startswith("NODESVC_")}


def _inside(paths: RunPaths, host_path: str) -> str:
    """A run-dir file as the jailed VMM names it (its run dir is /run)."""
    return os.path.join("/run", os.path.relpath(host_path, paths.run_dir))


def _read_pid(fd: int, popen: subprocess.Popen) -> int | None:
    """The VMM's pid, as the jailer writes it once the jail is entered; None if the jailer
    ended first (EOF)."""
    buf = b""
    while not buf.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], PID_TIMEOUT)
        if not ready:
            popen.kill()
            raise LaunchError(f"nodesvc-jailer gave no pid within {PID_TIMEOUT:.0f} s")
        chunk = os.read(fd, 64)
        if not chunk:
            return None
        buf += chunk
    return int(buf)


