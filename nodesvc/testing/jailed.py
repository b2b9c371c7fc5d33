"""`JailedVm`: a MicroVm run the way the node runs one — forked, jailed, filtered — and
driven from the test process as if it were in process.

The child takes the descriptors of the files the config names (opened here, by the
parent), plans its devices, enters a real jail (nodesvc_jailer: namespaces, cgroup,
pivot_root, no capabilities, unprivileged uid, seccomp per thread) and runs the VM.
Console output streams back through a pipe into a `CaptureSink` here; `stop`, `pause`,
`resume`, `stats()`, `create_snapshot()` and `devices.get(kind, id)` are requests over a
control pipe (device views are snapshots of a device's plain attributes). So a test
written against MicroVm runs jailed unchanged, and a device plugin's author can check
that their device works under the VMM's seccomp filters.

Snapshots as the node takes them: `JailedVm(cfg, snapshot_files=(state, mem))` hands the
two files in (created here), `create_snapshot()` writes them while paused, and
`JailedVm.restore(state, mem, overrides=...)` builds a new jailed VMM from them (the state
is read here, so the drives and the overridden TAP can be opened and handed in).
`metadata=` is the MMDS's first document, in the store before the guest runs.

Needs root (namespaces, cgroups, mknod). The test process becomes a child subreaper, so
it reaps the jailed VMM (pid 1 of its namespace) itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import os
import pickle
import select
import struct
import threading
import time
from types import SimpleNamespace

from nodesvc.vmm import hostfiles
from nodesvc.vmm.console import CaptureSink
from nodesvc.vmm.exits import ExitReason, VmExit

VSOCK_IN_JAIL = "/run/vsock.sock"
_ids = itertools.count()
_F_SETPIPE_SZ = 1031


def _plain(obj) -> SimpleNamespace:
    """A picklable view of an object's plain attributes (numbers, strings, None)."""
    ok = (int, float, str, bool, type(None))
    return SimpleNamespace(**{k: v for k, v in vars(obj).items()
                              if not k.startswith("_") and isinstance(v, ok)})


def _device_view(dev) -> SimpleNamespace:
    view = _plain(dev)
    if callable(getattr(dev, "stats_dict", None)):    # a device's counters (virtio-net)
        view.counters = dev.stats_dict()
    transport = getattr(dev, "transport", None)
    if transport is not None:
        view.transport = _plain(transport)
    return view


def _transport_view(t) -> SimpleNamespace:
    view = _plain(t)
    view.device = SimpleNamespace(device_id=t.device.device_id)
    return view


def _kernel_view(image) -> SimpleNamespace | None:
    if image is None:
        return None
    view = _plain(image)
    view.setup_header = True if image.setup_header is not None else None
    return view


class _PipeSink:
    """Console output to the parent; never blocks a vCPU (a full pipe drops, counted)."""

    def __init__(self, fd: int):
        self.fd, self.dropped = fd, 0

    def write(self, data: bytes) -> None:
        try:
            n = os.write(self.fd, data)
        except (BlockingIOError, BrokenPipeError):
            n = 0
        self.dropped += len(data) - n


def _send(fd: int, obj) -> None:
    data = pickle.dumps(obj)
    os.write(fd, struct.pack("<I", len(data)) + data)


def _recv(fd: int):
    head = _read_exact(fd, 4)
    if head is None:
        return None
    data = _read_exact(fd, struct.unpack("<I", head)[0])
    return None if data is None else pickle.loads(data)


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class _Devices:
    def __init__(self, vm: "JailedVm"):
        self._vm = vm

    def get(self, kind: str, device_id: str) -> SimpleNamespace:
        """A snapshot of the device's plain attributes (its last state once the VM ended)."""
        s = self._vm._summary
        if s is not None and "devices" in s:
            return s["devices"][(kind, device_id)]
        return self._vm._ask("device", kind, device_id)


class JailedVm:
    def __init__(self, config, *, jail_base: str, vm_id: str | None = None,
                 console_in_fd: int | None = None, limits=None, plugins=None,
                 metadata=None, snapshot_files: tuple[str, str] | None = None,
                 restore_state: dict | None = None, restore_mem: str | None = None):
        self.config, self.jail_base = config, jail_base
        self.metadata, self.snapshot_files = metadata, snapshot_files
        self._restore = (restore_state, restore_mem) if restore_state is not None else None
        self.vm_id = vm_id or f"t{os.getpid()}-{next(_ids)}"
        self.console_in_fd, self.limits, self.plugins = console_in_fd, limits, plugins
        self.sink = CaptureSink()
        self.devices = _Devices(self)
        self.pid: int | None = None
        self._exit: VmExit | None = None
        self._summary: dict | None = None
        self._lock = threading.Lock()
        self.created_at = time.monotonic()

    @classmethod
    def restore(cls, state_path: str, mem_path: str, *, overrides: dict | None = None,
                **kwargs) -> "JailedVm":
        """A jailed VM restored from a snapshot (not started: `start()` runs it). The
        state file is read and checked here; the memory file is handed in read-only."""
        from nodesvc.vmm.snapshot import load_state
        from nodesvc.vmm.snapshot.restore import config_from_state
        with open(state_path, "rb") as sf, open(mem_path, "rb") as mf:
            state = load_state(sf.fileno(), mf.fileno())
        return cls(config_from_state(state, overrides), restore_state=state,
                   restore_mem=mem_path, **kwargs)

    # -- the jail -----------------------------------------------------------------------------
    @property
    def run_dir(self) -> str:
        """The jail's run dir on the host (the VMM sees it as /run)."""
        return os.path.join(self.jail_base, self.vm_id, "root", "run")

    def guest_vsock_path(self, port: int) -> str:
        """Where a guest-initiated vsock connection to `port` lands: a host listener goes
        here, connectable by the VM's uid (the jailed VMM reaches nothing else)."""
        return os.path.join(self.run_dir, f"{os.path.basename(VSOCK_IN_JAIL)}_{port}")

    @property
    def jail_args(self) -> dict:
        digest = hashlib.sha256(os.path.abspath(self.jail_base).encode()).hexdigest()[:10]
        return {"base_dir": self.jail_base, "uid_state_dir": os.path.join(self.jail_base,
                                                                          ".uids"),
                "parent_cgroup": f"nodesvc-test/{digest}"}

    def _files(self) -> dict[str, int]:
        from nodesvc.net.tap import open_tap
        bs, out = self.config.boot_source, {}
        for key in (bs.kernel_image_path, bs.initrd_path):
            if key:
                out[key] = os.open(key, os.O_RDONLY | os.O_CLOEXEC)
        for d in self.config.devices:
            c = d.config
            if d.kind == "virtio-blk":
                ro = bool(c.get("is_read_only"))
                out[c["path_on_host"]] = os.open(c["path_on_host"], (os.O_RDONLY if ro else
                                                                     os.O_RDWR) | os.O_CLOEXEC)
            elif d.kind == "virtio-net":
                out[hostfiles.tap_key(c.get("netns"), c["host_dev_name"])] = \
                    open_tap(c["host_dev_name"], c.get("netns")).fd
        for path in self.snapshot_files or ():
            out[path] = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        if self._restore:
            out[self._restore[1]] = os.open(self._restore[1], os.O_RDONLY | os.O_CLOEXEC)
        return out

    def start(self) -> None:
        from nodesvc.core.launcher import link_vsock
        from nodesvc_jailer import linux as L
        L.prctl(L.PR_SET_CHILD_SUBREAPER, 1)
        files = self._files()
        vsock = [d.config["uds_path"] for d in self.config.devices if d.kind == "vsock"]
        for path in vsock:
            link_vsock(path, os.path.join(self.jail_base, self.vm_id, "root", "run"))
        console_r, console_w = os.pipe2(os.O_CLOEXEC)
        fcntl.fcntl(console_w, _F_SETPIPE_SZ, 1 << 20)
        os.set_blocking(console_w, False)
        ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC)
        rep_r, rep_w = os.pipe2(os.O_CLOEXEC)
        pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
        mid = os.fork()
        if mid == 0:
            code = 3
            try:
                for fd in (console_r, ctl_w, rep_r, pid_r):
                    os.close(fd)
                code = self._child(files, vsock, console_w, ctl_r, rep_w, pid_w)
            except BaseException as e:
                try:
                    _send(rep_w, ("error", f"{type(e).__name__}: {e}"))
                except OSError:
                    pass
            finally:
                os._exit(code)
        for fd in (console_w, ctl_r, rep_w, pid_w, *files.values()):
            os.close(fd)
        _, status = os.waitpid(mid, 0)
        text = os.read(pid_r, 64)
        os.close(pid_r)
        self._ctl, self._rep = ctl_w, rep_r
        self.pid = int(text) if text.strip() else None
        threading.Thread(target=self._pump, args=(console_r,), daemon=True).start()
        if self.pid is None:
            msg = _recv(rep_r)
            raise RuntimeError(f"the jailed VM did not start: {msg}")

    def _child(self, files, vsock, console_w, ctl_r, rep_w, pid_w) -> int:
        from nodesvc.plugins import PluginManager
        from nodesvc.vmm.vm import MicroVm
        from nodesvc_jailer import Jail, Limits, linux as L, seccomp
        import nodesvc.vmm.snapshot  # noqa: F401  (nothing imports once jailed)
        hostfiles.install(files)
        for path in vsock:
            hostfiles.relocate(path, VSOCK_IN_JAIL)
        vm = MicroVm(self.config, vm_id=self.vm_id, console_out=_PipeSink(console_w),
                     console_in_fd=self.console_in_fd,
                     plugins=self.plugins or PluginManager.shared(),
                     thread_hooks=seccomp.thread_hooks())
        if self.metadata is not None:
            vm.mmds.mmds.put(self.metadata)
        vm.build(("plugins",))
        L.unshare(L.CLONE_NEWNET)
        keep = tuple(int(n) for n in os.listdir("/proc/self/fd") if int(n) > 2)
        mc = self.config.machine_config
        limits = self.limits or Limits(memory_bytes=(mc.mem_size_mib + 256) << 20,
                                       pids=mc.vcpu_count + 16)
        j = Jail(self.vm_id, limits=limits,
                 pid_fd=pid_w, keep_fds=keep, **self.jail_args)
        j.enter()
        os.close(pid_w)
        try:
            if self._restore:
                self._restore_into(vm)
            vm.start()
        except Exception as e:
            _send(rep_w, ("final", {"error": f"{type(e).__name__}: {e}"}))
            return 1
        seccomp.install("control")
        transports = list(vm.transports)    # the VM forgets them when it closes
        threading.Thread(target=self._serve, args=(vm, ctl_r, rep_w), daemon=True).start()
        vm.wait()
        result = vm.shutdown()
        summary = {"reason": result.reason, "detail": result.detail, "vcpu": result.vcpu,
                   "stats": vm.stats(), "cmdline": vm.cmdline,
                   "created_at": vm.created_at, "ended_at": vm.ended_at,
                   "devices": {(k.kind, k.id): _device_view(d) for k, d in vm.devices},
                   "transports": [_transport_view(t) for t in transports],
                   "kernel": _kernel_view(vm.kernel)}
        with self._lock:
            _send(rep_w, ("final", summary))
        return 0

    def _restore_into(self, vm) -> None:
        from nodesvc.vmm.snapshot.restore import restore_into
        fd = hostfiles.open_fd(self._restore[1])
        try:
            restore_into(vm, self._restore[0], fd)
        finally:
            os.close(fd)    # the mapping holds the file

    def _snapshot(self, vm) -> dict:
        from nodesvc.vmm.snapshot import create_snapshot
        from nodesvc.vmm.snapshot.files import open_for_write
        if not self.snapshot_files:
            raise ValueError("JailedVm(snapshot_files=...) was not given")
        fds = [open_for_write(p) for p in self.snapshot_files]
        try:
            return create_snapshot(vm, *fds, meta={"vm_id": self.vm_id})
        finally:
            for fd in fds:
                os.close(fd)

    def _serve(self, vm, ctl_r, rep_w) -> None:
        """Child: requests from the test process, answered in order."""
        while True:
            req = _recv(ctl_r)
            if req is None:
                return
            cmd, *args = req
            if cmd == "stop":
                vm.stop(*args)
                continue
            if cmd == "pause":
                vm.pause()
                out = None
            elif cmd == "resume":
                vm.resume()
                out = None
            elif cmd == "stats":
                out = vm.stats()
            elif cmd == "snapshot":
                try:
                    out = self._snapshot(vm)
                except Exception as e:     # raised in the test process
                    out = RuntimeError(f"snapshot failed: {type(e).__name__}: {e}")
            elif cmd == "device":
                out = _device_view(vm.devices.get(*args))
            else:
                out = ValueError(f"unknown request {cmd!r}")
            with self._lock:
                _send(rep_w, ("reply", out))

    def _pump(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                os.close(fd)
                return
            self.sink.write(data)

    # -- what a test calls --------------------------------------------------------------------
    def _ask(self, *req):
        with self._lock:
            _send(self._ctl, req)
            while True:
                kind, out = _recv(self._rep) or ("final", None)
                if kind == "final":
                    self._take_final(out)
                    raise RuntimeError("the VM ended before it answered")
                if isinstance(out, Exception):
                    raise out
                return out

    def _take_final(self, summary) -> None:
        if not summary:
            from nodesvc_jailer.cleanup import read_fault
            why = read_fault(self.vm_id, self.jail_base) or "no fault recorded"
            summary = {"error": f"the jailed VMM ended without a summary ({why.strip()})"}
        self._summary = summary
        if "error" in self._summary:
            self._summary = {"reason": ExitReason.DEVICE_ERROR,
                             "detail": self._summary["error"], "vcpu": None}
        s = self._summary
        self._exit = VmExit(s["reason"], s["detail"], s.get("vcpu"))

    def stop(self, detail: str = "stop requested") -> None:
        with self._lock:
            _send(self._ctl, ("stop", detail))

    def pause(self) -> None:
        self._ask("pause")

    def resume(self) -> None:
        self._ask("resume")

    def create_snapshot(self) -> dict:
        """Write the snapshot into `snapshot_files` (pause first); create_snapshot's
        figures (sizes, seconds per part)."""
        return self._ask("snapshot")

    def stats(self) -> dict:
        if self._summary is not None and "stats" in self._summary:
            return self._summary["stats"]
        return self._ask("stats")

    @property
    def cmdline(self) -> str:
        return self._summary.get("cmdline", "") if self._summary else ""

    @property
    def transports(self) -> list:
        """The virtio transports as the VM ended (slot order): name, status, device id."""
        return self._summary.get("transports", []) if self._summary else []

    @property
    def kernel(self):
        return self._summary.get("kernel") if self._summary else None

    @property
    def ended_at(self) -> float | None:
        return self._summary.get("ended_at") if self._summary else None

    def wait(self, timeout: float | None = None) -> VmExit | None:
        if self._exit is not None:
            return self._exit
        r, _, _ = select.select([self._rep], [], [], timeout)
        if not r:
            return None
        with self._lock:
            while self._exit is None:
                msg = _recv(self._rep)
                if msg is None:
                    self._take_final(None)
                elif msg[0] == "final":
                    self._take_final(msg[1])
        self._reap()
        return self._exit

    def run(self, timeout: float | None = None) -> VmExit:
        self.start()
        if self.wait(timeout) is None:
            self.stop(f"timeout after {timeout:.1f}s")
            if self.wait(10) is None:
                os.kill(self.pid, 9)
                self.wait(5)
        return self.shutdown()

    def shutdown(self) -> VmExit:
        if self._exit is None:
            self.stop()
            if self.wait(10) is None and self.pid:
                os.kill(self.pid, 9)
                self._take_final(None)
        self._reap()
        return self._exit

    def _reap(self) -> None:
        if self.pid is not None:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = None
            from nodesvc_jailer import cleanup
            cleanup(self.vm_id, **self.jail_args)
            for fd in (self._ctl, self._rep):
                try:
                    os.close(fd)
                except OSError:
                    pass
