"""`python -m nodesvc.vmm.zygote --socket PATH`: forks one jailed VMM per request.

Python start-up and imports are most of what starting a VMM costs, and a jailed VMM has
no Python runtime on disk to import from. So the node service runs one zygote: a
single-threaded process that imports the VMM, its plugins and the jailer once, compiles
the seccomp filters once, and then, per VM, parses the VM's arguments and config (here: a
bad config costs no process, and what the zygote runs costs no VMM a page of its own) and
clones a child straight into a new PID namespace, with the node service as its parent
(clone(CLONE_PARENT | CLONE_NEWPID), nodesvc_jailer.linux.fork_with). The child, pid 1
of its namespace and still root:

 1. takes the descriptors the node handed in (kernel, initrd, drives, TAPs: `hostfiles`),
 2. plans its devices (the checks that look at host paths),
 3. binds its control socket and opens its FIFOs (in the jail's run dir),
 4. enters the jail (nodesvc_jailer.Jail: namespaces, cgroup, pivot_root, no capabilities,
    an unprivileged uid, the "vmm" seccomp baseline), then tells the zygote its host pid,

then serves the control protocol (nodesvc.vmm.process) as any VMM does. The guest runs no
instruction before step 4; the vCPU and event-loop threads load their own filters first
thing, and the main thread loads the "control" filter once they exist.

The node service reaps the VMM (its child) and so learns its exit status. Where glibc's
thread descriptor is not laid out as fork_with expects, the zygote forks instead and the
jail forks once more into the PID namespace; its first process exits and the node, a
PR_SET_CHILD_SUBREAPER, inherits the VMM. The trade-off against exec mode
(`nodesvc-jailer -- python -m nodesvc.vmm.process`, a fresh process per VM): every VMM
made from one zygote shares its address-space layout (ASLR is per zygote, not per VM) —
see docs/security.md.

Protocol: one connection per request; the node sends one JSON object with SCM_RIGHTS
descriptors (the first is the VMM's stderr file, then one per `files` key) and reads one
JSON reply: {"pid": <host pid of the VMM>} or {"error": "..."} (with "pid" when a cloned VMM
died before its jail was ready: the node, its parent, reaps it).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass

# Everything a VMM may need is imported here, before any jail exists.
import nodesvc.vmm.builder  # noqa: F401
import nodesvc.vmm.console  # noqa: F401
import nodesvc.vmm.snapshot  # noqa: F401  (CreateSnapshot and restores run jailed)
import nodesvc.vmm.vm  # noqa: F401
from nodesvc.plugins import PluginManager
from nodesvc.vmm import hostfiles, trace
from nodesvc.vmm.cmdline import host_is_nested_pvm
from nodesvc.vmm.config import parse_config
from nodesvc.vmm.control import bind_unix
from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.process import VmmProcess, build_parser, write_exit_file
from nodesvc_jailer import Jail, Limits, cgroup, seccomp
from nodesvc_jailer import linux as L
from nodesvc_jailer.fdpass import recv_fds

log = logging.getLogger("nodesvc.vmm.zygote")
MAX_REQUEST = 1 << 20
_VMM_ARGS = None    # the VMM's argument parser, built by warm_up()
_CGROUPS = None     # (version, cgroup mounts) of this host, read by warm_up()
REHEARSALS = 10     # enough calls for CPython to quicken what a child runs before its jail
VM_REHEARSALS = 3   # of those, how many also start the VM (KVM, threads: ~20 ms each)
# The rehearsal's guest: one PT_LOAD at 1 MiB holding `mov al, 0xfe; out 0x64, al; hlt`
# (an i8042 reset: the VM ends at its first exit, in any CPU mode).
_RESET_CODE = b"\xb0\xfe\xe6\x64\xf4"


class Prebuilt:
    """The zygote's plugin manager with its registries filled once, here.

    Filling one runs every plugin's hook through pluggy (a hook caller per plugin); in
    each forked child that cost ~1 ms of CPU and, worse, wrote to hundreds of the
    zygote's objects (copy-on-write: more unique memory per VMM). A registry is only
    read once filled, so every child can use the zygote's."""

    def __init__(self, manager: PluginManager):
        self.manager = manager
        self._devices = manager.device_registry()
        self._limiters = manager.rate_limiter_registry()

    def device_registry(self):
        return self._devices

    def rate_limiter_registry(self):
        return self._limiters

    def __getattr__(self, name):
        return getattr(self.manager, name)


def warm_up() -> Prebuilt:
    """Import every plugin and what it imports lazily; compile the filters."""
    plugins = Prebuilt(PluginManager.shared())
    seccomp.precompile()
    host_is_nested_pvm()    # /sys is not in the jail: the answer is cached for the forks
    global _CGROUPS
    mounts = cgroup.read_mounts()   # one read of /proc/mounts, not one per VM
    _CGROUPS = (cgroup.detect_version(mounts=mounts), mounts)
    L.cap_last_cap()                # cached: the jail drops every capability up to it
    L.fork_with_supported()         # checked once (in a thread that has ended by the fork)
    import encodings.idna  # noqa: F401  (socket paths and names may need it)
    global _VMM_ARGS
    _VMM_ARGS = build_parser()     # once: building it per VM cost each child ~2 ms
    # Everything imported so far lives as long as the zygote: move it out of the
    # collector's reach, so a child's collections never write to (and so copy) the
    # pages it shares with the zygote: less unique memory per VMM, fewer COW faults.
    gc.collect()
    gc.freeze()
    return plugins


def rehearse(plugins, rounds: int = REHEARSALS) -> None:
    """Run a child's steps here, a few times, on a throwaway VM (the first few also
    start it: KVM, vCPU and device threads, a guest that resets at its first exit).

    What runs for the first time in a forked child writes to the zygote's pages, each
    write a copy-on-write fault and a page of the VMM's own: CPython 3.11 quickens a
    function's bytecode in place after a few calls, specializes its instructions as
    they run, and fills lazy caches (the control protocol's type hints, argparse's
    formatters). Done here, those pages stay shared by every VMM (measured: idle VMM
    USS 7.0 -> 6.2 MiB). Nothing outlives it: its socket, pipes, KVM objects and log
    handler go, the signal handlers are put back, and every thread it started has
    ended before the zygote forks. A rehearsal that fails only costs memory."""
    try:
        _rehearse(plugins, rounds)
    except Exception:
        log.exception("rehearsal failed (VMMs start anyway, with more unique memory)")


def fill_free_blocks() -> list:
    """Fill every free block of the zygote's small-object pools; returns the fillers.

    The imports and the rehearsal leave free blocks in most of pymalloc's pools. A VMM's
    first allocations would land in them, one or two objects per page of the zygote's
    memory, and each page written is a page copied (measured: ~100 KiB of new objects
    spread over ~500 pages). With the holes taken, a VMM's objects fill fresh pools of
    its own, densely (idle VMM USS in bench/node.py 6.4 -> 5.9 MiB). The block counts
    come from sys._debugmallocstats()' table (CPython's own report); if it cannot be
    read, nothing is filled."""
    import tempfile
    with tempfile.TemporaryFile() as tmp:   # the report goes to the C-level stderr
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    free: list[tuple[int, int]] = []    # (block size, free blocks in used pools)
    for line in text.splitlines():      # "class size num-pools blocks-in-use avail-blocks"
        parts = line.split()
        if len(parts) == 5 and all(p.isdigit() for p in parts):
            free.append((int(parts[1]), int(parts[4])))
        elif free:
            break
    filler: list = [None] * sum(n for _, n in free)    # allocated first: no hole of its own
    i = 0
    for size, n in free:
        for _ in range(n):  # an object whose allocation is exactly `size` bytes or less
            if size == 16:
                filler[i] = object()
            elif size == 32:
                filler[i] = i + 0.5             # a float: 24 bytes
            else:
                filler[i] = bytes(size - 33)    # a bytes object: 33 bytes + its length
            i += 1
    return filler


def _reset_elf() -> bytes:
    ehdr = struct.pack("<4sBBBB8xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 2, 62, 1,
                       0x100000, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, 0x100000, 0x100000, len(_RESET_CODE),
                       len(_RESET_CODE), 0x1000)
    return (ehdr + phdr).ljust(0x1000, b"\0") + _RESET_CODE


def _rehearse(plugins, rounds: int) -> None:
    import tempfile
    from nodesvc.vmm import actions as A
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    root = logging.getLogger("nodesvc")
    level = root.level
    try:
        with tempfile.TemporaryDirectory(prefix="nodesvc-zygote-") as d:
            kernel = os.path.join(d, "vmlinux")
            with open(kernel, "wb") as f:
                f.write(_reset_elf())
            fc = {"boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0"},
                  "machine-config": {"vcpu_count": 1, "mem_size_mib": 16}}
            argv = ["--id", "rehearsal", "--config-file", "-", "--control-socket",
                    os.path.join(d, "c.sock"), "--metrics-interval", "0",
                    "--log-level", "warning"]
            for i in range(rounds):
                proc = VmmProcess(_VMM_ARGS.parse_args(argv), trace.Timeline(),
                                  plugins=plugins)
                try:
                    proc.open()
                    proc.plan(parse_config(fc))
                    proc.handle_line(b'{"id": 1, "op": "status"}')
                    if i < VM_REHEARSALS and os.access("/dev/kvm", os.R_OK | os.W_OK):
                        _rehearse_start(proc)
                finally:
                    proc.close()
                    if hasattr(proc, "log_handler"):
                        root.removeHandler(proc.log_handler)
                    proc.sel.close()
                    os.close(proc.wake_r)
                    os.close(proc.wake_w)
                    if os.path.exists(proc.args.control_socket):
                        os.unlink(proc.args.control_socket)
    finally:
        root.setLevel(level)
        for s, h in handlers.items():
            signal.signal(s, h)
    if threading.active_count() != 1:   # a fork must not copy a thread's half-held lock
        raise SystemExit(f"zygote: threads left after the rehearsal: {threading.enumerate()}")
    for cls in A.ACTIONS.values():      # the protocol's per-class caches, every action
        try:
            A.decode_request({"op": cls.name})
        except A.ActionError:
            pass


def _rehearse_start(proc) -> None:
    """`start` the rehearsal's VM (its guest resets at once) and end it as the VMM's main
    loop does; every thread it made is joined before this returns."""
    reply = proc.handle_line(b'{"id": 2, "op": "start"}')
    if not reply.get("ok"):
        raise RuntimeError(f"rehearsal start: {reply.get('error')}")
    proc.vm.wait(5.0)
    proc.handle_line(b'{"id": 3, "op": "status"}')
    proc.exit_info = {}
    proc._finish()
    for t in threading.enumerate():
        if t is not threading.current_thread():
            t.join(5.0)


class Zygote:
    def __init__(self, socket_path: str):
        self.socket_path = socket_path
        # The zygote lives as long as its node service (the VMMs it forked do not need
        # it: the node is their subreaper); a new node starts a new zygote.
        parent = os.getppid()
        L.prctl(L.PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:     # the node died before the prctl
            raise SystemExit(0)
        self.plugins = warm_up()
        rehearse(self.plugins)
        gc.collect()
        self.filler = fill_free_blocks()
        gc.freeze()     # what the rehearsal left (caches) is the zygote's too
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
        self.listener = bind_unix(socket_path)
        os.chmod(socket_path, 0o600)
        self.listener.listen(16)
        self.spawned = 0
        self.cloned = L.fork_with_supported()

    def serve(self) -> None:
        log.info("zygote ready on %s; VMMs are %s", self.socket_path,
                 "cloned into their PID namespace" if self.cloned else
                 "forked, then forked again into their PID namespace (glibc's thread "
                 "descriptor is not laid out as expected)")
        while True:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(10.0)
                self.handle(conn)

    def handle(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            msg, fds = recv_fds(conn, MAX_REQUEST)
            if not msg:     # the node seeing whether we answer (connect, close)
                return
            req = json.loads(msg)
            reply = self.spawn(conn, req, fds)
        except Exception as e:     # a bad request never ends the zygote
            log.exception("spawn failed")
            reply = {"error": f"{type(e).__name__}: {e}"}
        finally:
            for fd in fds:
                os.close(fd)
        try:
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass

    def spawn(self, conn: socket.socket, req: dict, fds: list[int]) -> dict:
        if not fds or len(fds) != len(req.get("files", ())) + 1:
            raise ValueError("expected the stderr descriptor and one per file")
        # Parsed here, before the fork: what the zygote runs costs no VMM a page of its
        # own (the pages stay shared), and a bad config needs no process at all.
        timeline = trace.Timeline()
        try:
            args = (_VMM_ARGS or build_parser()).parse_args(req["argv"])
        except SystemExit:     # argparse said why on our stderr
            raise ValueError(f"bad VMM arguments {req['argv']!r}") from None
        timeline.mark("config_start")
        try:
            cfg = parse_config(req["config"])
        except ConfigError as e:
            write_exit_file(req.get("exit_file_host"), {
                "reason": "config-error", "detail": str(e), "failure": True, "exit_code": 2,
                "ran": False})
            return {"error": f"config error: {e}"}
        timeline.mark("config_end")
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        # Cloned: the child is pid 1 of a new PID namespace and the node's child (the node
        # reaps it); else forked: the jail forks once more and the node inherits the VMM.
        child = L.fork_with(L.CLONE_PARENT | L.CLONE_NEWPID) if self.cloned else os.fork()
        if child == 0:
            code = 1
            try:
                os.close(ready_r)
                conn.close()
                self.listener.close()
                code = run_child(req, fds, ready_w, self.plugins,
                                 Parsed(args, cfg, timeline, self.cloned))
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as f:
            line = f.read()     # the VMM's host pid once jailed; EOF if it died first
        self.spawned += 1
        if line.strip():
            if not self.cloned:
                os.waitpid(child, 0)    # the jail's first process, gone
            return {"pid": int(line)}
        if self.cloned:     # the node reaps it and learns how it ended
            return {"error": "the VMM ended before its jail was ready; see its stderr",
                    "pid": child}
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        return {"error": f"the VMM ended before its jail was ready (status {code}); "
                         "see its stderr", "exit_code": code}


@dataclass
class Parsed:
    """What the zygote made of a request before forking."""
    args: argparse.Namespace
    config: object
    timeline: trace.Timeline
    cloned: bool


def run_child(req: dict, fds: list[int], ready_w: int, plugins, parsed: Parsed) -> int:
    """In the forked child: everything up to the jail, then the VMM itself."""
    os.setsid()     # its own session: signals to the node's or zygote's group miss it
    # The zygote's stderr handler is not the VMM's: its records go to its log FIFO (and,
    # with no handler here, warnings also to its stderr), as in an exec'd VMM.
    logging.getLogger().handlers.clear()
    os.dup2(fds[0], 1)
    os.dup2(fds[0], 2)
    os.close(fds[0])
    hostfiles.install(dict(zip(req["files"], fds[1:])))
    jail = req["jail"]
    for host, inside in jail.get("relocate", ()):
        hostfiles.relocate(host, inside)
    timeline, cfg = parsed.timeline, parsed.config
    proc = VmmProcess(parsed.args, timeline, plugins=plugins,
                      thread_hooks=seccomp.thread_hooks(),
                      after_start=lambda: seccomp.install("control"))
    try:
        proc.open()
        proc.plan(cfg)
    except (ConfigError, OSError) as e:
        info = {"reason": "config-error", "detail": str(e), "failure": True, "exit_code": 2,
                "ran": False}
        write_exit_file(req.get("exit_file_host"), info)
        print(f"nodesvc-vmm: {e}", file=sys.stderr)
        return 2
    timeline.mark("jail_start")
    keep = tuple(int(n) for n in os.listdir("/proc/self/fd") if int(n) > 2)
    version, mounts = _CGROUPS or (None, None)
    j = Jail(req["vm_id"], base_dir=jail["base_dir"], uid_state_dir=jail["uid_state_dir"],
             uid_range=tuple(jail["uid_range"]), netns=jail.get("netns"),
             # no network but what the node handed in (TAP fds)
             new_netns=jail.get("new_netns", True) and not jail.get("netns"),
             parent_cgroup=jail.get("parent_cgroup", "nodesvc"),
             limits=Limits(memory_bytes=jail.get("memory_bytes"), cpus=jail.get("cpus"),
                           pids=jail.get("pids")),
             pid_ns_parent="cloned" if parsed.cloned else "exit",
             pid_fd=None if parsed.cloned else ready_w, keep_fds=keep,
             cgroup_version=version, cgroup_mounts=mounts)
    j.enter()
    timeline.mark("jail_end")
    if parsed.cloned:
        os.write(ready_w, f"{j.host_pid}\n".encode())
    os.close(ready_w)
    proc.pid = j.host_pid or os.getpid()
    try:
        return proc.run(cfg)
    finally:
        proc.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nodesvc.vmm.zygote")
    p.add_argument("--socket", required=True, help="Unix socket to serve spawn requests on")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s zygote %(levelname)s %(message)s")
    t0 = time.monotonic()
    z = Zygote(args.socket)
    log.info("imports and filters ready in %.0f ms", (time.monotonic() - t0) * 1e3)
    try:
        z.serve()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
