"""Exec mode: a VMM started as `nodesvc-jailer ... -- python -m nodesvc.vmm.process --jailed`.

A fresh interpreter per VM (its own address-space layout) instead of a fork of the zygote
(one layout shared by every VMM it forks): the trade-off is in docs/security.md. The jailer
confined the process before exec (namespaces, cgroup, pivot_root into a root where only
the Python runtime and nodesvc's code are bound read-only, no capabilities, an unprivileged
uid), so the steps the zygote's child runs before `Jail.enter` run here already jailed,
from what the node left open across both execs:

 1. the host files: `--hostfile KEY=FD` (kernel, initrd, drives, TAPs, and the run dir's
    FIFOs, which are root's) become the hostfiles table; `--relocate HOST=INSIDE` places
    the vsock socket in /run;
 2. every import the zygote makes, the plugins loaded, the filters compiled (the node
    says whether the host is nested PVM: there is no /sys here);
 3. the config (stdin), parsed, and the devices planned: their host-file checks see the
    handed descriptors; the control socket is bound in /run (the VMM's uid owns it);
 4. what `Jail.enter` does last: the SIGSYS reporter armed on the fault file the node
    opened (`--seccomp-fault-fd`), the "vmm" baseline loaded, lazy imports refused;

then the same `VmmProcess.run` as a zygote's child, with the same per-thread filters.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import linecache
import os
import sys

from . import hostfiles, trace

HOST_PID_ENV = "NODESVC_JAIL_HOST_PID"      # set by nodesvc-jailer before exec
FIFOS = {"console_fifo": "console", "log_fifo": "logs", "metrics_fifo": "metrics"}
_F_SETPIPE_SZ = 1031


def pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    """KEY=VALUE arguments; the key is a path and may hold '=', the value may not."""
    out = []
    for item in items or ():
        key, sep, value = item.rpartition("=")
        if not sep or not key or not value:
            raise SystemExit(f"nodesvc-vmm-process: {what} {item!r}: expected KEY=VALUE")
        out.append((key, value))
    return out


def run_jailed(args: argparse.Namespace, timeline: trace.Timeline) -> int:
    if args.seccomp_fault_fd is None:
        raise SystemExit("nodesvc-vmm-process: --jailed needs --seccomp-fault-fd")
    from . import cmdline
    pvm = bool(args.nested_pvm)
    # Before the zygote module binds the name: builder and cmdline ask this later.
    cmdline.host_is_nested_pvm = functools.cache(lambda: pvm)
    hostfiles.install({key: int(fd) for key, fd in pairs(args.hostfile, "--hostfile")})
    for host, inside in pairs(args.relocate, "--relocate"):
        hostfiles.relocate(host, inside)

    from nodesvc_jailer import seccomp
    from nodesvc_jailer.jail import ImportGuard

    from . import zygote  # noqa: F401  (its imports: everything a VMM may need)
    from ..plugins import PluginManager
    from .config import load_config_file
    from .errors import ConfigError
    from .process import CONSOLE_PIPE_SIZE, VmmProcess, write_exit_file
    # The zygote's warm-up minus what only pays off across forks (rehearsals, gc.freeze).
    plugins = PluginManager.shared()
    plugins.device_registry()
    plugins.rate_limiter_registry()
    seccomp.precompile()
    import encodings.idna  # noqa: F401  (socket paths and names may need it)

    # The run dir's FIFOs are root's: the node opened them for us.
    fifo_fds = {}
    for arg in FIFOS:
        path = getattr(args, arg)
        fd = hostfiles.take(path) if path else None
        if fd is not None:
            fifo_fds[arg] = fd
            setattr(args, arg, None)
    proc = VmmProcess(args, timeline, plugins=plugins, thread_hooks=seccomp.thread_hooks(),
                      after_start=lambda: seccomp.install("control"))
    for arg, fd in fifo_fds.items():
        getattr(proc, FIFOS[arg]).fd = fd
    if "console_fifo" in fifo_fds:
        try:
            fcntl.fcntl(fifo_fds["console_fifo"], _F_SETPIPE_SZ, CONSOLE_PIPE_SIZE)
        except OSError:
            pass
    try:
        timeline.mark("config_start")
        cfg = load_config_file(0 if args.config_file == "-" else args.config_file,
                               host_mem_bytes=args.host_mem_bytes)
        timeline.mark("config_end")
        proc.open()
        proc.plan(cfg)
    except (ConfigError, OSError) as e:
        write_exit_file(args.exit_file, {"reason": "config-error", "detail": str(e),
                                         "failure": True, "exit_code": 2, "ran": False})
        print(f"nodesvc-vmm: {e}", file=sys.stderr)
        return 2
    timeline.mark("jail_start")     # the VMM's own part of the jail: Jail.enter's last steps
    seccomp.arm(args.seccomp_fault_fd)
    seccomp.install("vmm")
    sys.meta_path.insert(0, ImportGuard())
    linecache.checkcache = lambda *a, **kw: None
    linecache.updatecache = lambda *a, **kw: []
    timeline.mark("jail_end")
    proc.pid = int(os.environ.get(HOST_PID_ENV) or os.getpid())
    try:
        return proc.run(cfg)
    finally:
        proc.close()


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("exec mode (started jailed by nodesvc-jailer; see exec_mode.py)")
    g.add_argument("--jailed", action="store_true",
                   help="the process is already jailed: host files come as descriptors")
    g.add_argument("--hostfile", action="append", default=[], metavar="KEY=FD",
                   help="host file KEY (a path, a TAP key, a FIFO) is the inherited FD")
    g.add_argument("--relocate", action="append", default=[], metavar="HOST=INSIDE",
                   help="a socket the config names HOST is made at INSIDE")
    g.add_argument("--seccomp-fault-fd", type=int, metavar="FD",
                   help="where the SIGSYS reporter writes; loads the seccomp filters")
    g.add_argument("--nested-pvm", type=int, choices=[0, 1], default=0,
                   help="the host runs KVM under PVM (the jail has no /sys to tell)")
    g.add_argument("--host-mem-bytes", type=int, help="host MemTotal (no /proc here)")
