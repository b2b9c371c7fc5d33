"""`python -m nodesvc.vmm.process`: one microVM in its own process, driven over a control socket.

    python -m nodesvc.vmm.process --id web-1 --config-file vm.json \\
        --control-socket run/control.sock --console-fifo run/console.fifo \\
        --log-fifo run/log.fifo --metrics-fifo run/metrics.fifo --exit-file run/exit.json

Spawned by the node service (through the jailer once it exists) and deliberately lean: no
grpc, no protobuf, no OpenTelemetry exporter. The main thread owns the control socket (and
must: vCPU kick signals are installed from it); vCPU and device threads belong to MicroVm.
The FIFOs are opened O_RDWR|O_NONBLOCK so the VMM never blocks on, nor dies with, a reader
that went away: when a pipe is full the write is dropped and counted. When the VM ends the
process writes `exit.json` (so a node service that was down still learns why), pushes an
`exited` event to every connection and exits with the reason's exit code.
"""

from __future__ import annotations

import argparse
import array
import json
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time

from ..mmds.store import InvalidDocument, LimitExceeded, NotInitialized
from . import actions as A
from . import control, exec_mode, hostfiles, trace
from .capabilities import Console, Drive, PowerButton, RateLimited
from .control import FifoWriter, JsonLogHandler
from .errors import ConfigError

log = logging.getLogger("nodesvc.vmm.process")
CONSOLE_PIPE_SIZE = 1 << 18   # room for a boot's worth of output while the reader is busy
# Modules whose presence would mean the VMM stopped being lean; reported by `status`.
# (Tracing is plain timestamps here: the node service makes the OTel spans.)
HEAVY_MODULES = ("grpc", "google.protobuf", "opentelemetry")


class Client:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""
        self.fds: list[int] = []    # SCM_RIGHTS fds not yet claimed by a request's "files"


class VmmProcess:
    """`plugins`, `thread_hooks` and `after_start` are the jail's (nodesvc.vmm.zygote): the
    plugins loaded before the jail closed, the per-thread seccomp filters, and the main
    thread's own filter, loaded once the VM's threads exist."""

    def __init__(self, args: argparse.Namespace, timeline: trace.Timeline | None = None, *,
                 plugins=None, thread_hooks: dict | None = None, after_start=None):
        self.args, self.vm_id = args, args.id
        self.plugins, self.thread_hooks, self.after_start = plugins, thread_hooks, after_start
        self.pid = os.getpid()      # in the node's pid namespace (a jail sets it: we are 1)
        self.timeline = timeline or trace.Timeline()
        self.traceparent: str | None = None     # W3C trace context of the `start` request
        self._boot: trace.BootWatch | None = None
        self._req_trace: str | None = None
        self.state = control.READY
        self.vm = None
        self.exit_info: dict | None = None
        self.console = FifoWriter(args.console_fifo, CONSOLE_PIPE_SIZE)
        self.logs = FifoWriter(args.log_fifo)
        self.metrics = FifoWriter(args.metrics_fifo)
        self._signalled: str | None = None
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.clients: list[Client] = []
        self.listener = None
        # The one dispatch table: action class -> handler. The hello lists exactly these.
        self.handlers = {
            A.Status: self.status, A.Start: self.start, A.Pause: self.pause,
            A.Resume: self.resume, A.Stop: self.stop, A.CtrlAltDel: self.ctrl_alt_del,
            A.ConsoleInput: self.console_input, A.FlushMetrics: self.flush_metrics,
            A.UpdateDrive: self.update_drive, A.UpdateRateLimiter: self.update_rate_limiter,
            A.CreateSnapshot: self.create_snapshot, A.RestoreSnapshot: self.restore_snapshot,
            A.PutMetadata: self.put_metadata, A.PatchMetadata: self.patch_metadata,
        }

    # -- set-up -----------------------------------------------------------------------
    def open(self) -> None:
        handler = self.log_handler = JsonLogHandler(self.logs, self.vm_id)
        root = logging.getLogger("nodesvc")
        root.addHandler(handler)
        root.setLevel(getattr(logging, self.args.log_level.upper(), logging.INFO))
        self.listener = control.bind_unix(self.args.control_socket)
        self.listener.listen(4)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self._signalled = signal.Signals(signum).name
        os.write(self.wake_w, b"s")

    # -- main loop --------------------------------------------------------------------
    def run(self, cfg) -> int:
        self.cfg = cfg
        self.timeline.mark("ready")
        log.info("VMM process ready")
        interval = self.args.metrics_interval
        next_metrics = time.monotonic() + interval if interval > 0 else None
        while self.exit_info is None:
            timeout = None if next_metrics is None else max(0.0, next_metrics - time.monotonic())
            for key, _ in self.sel.select(timeout):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    self._woken()
                else:
                    self._readable(key.data)
                if self.exit_info is not None:
                    break
            if next_metrics is not None and time.monotonic() >= next_metrics:
                self.write_metrics()
                next_metrics = time.monotonic() + interval
        return self._finish()

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.settimeout(5.0)    # a peer that stops reading is dropped, never waited on forever
        c = Client(sock)
        self.clients.append(c)
        self.sel.register(sock, selectors.EVENT_READ, c)
        self._send(c, {"event": "hello", "vm_id": self.vm_id, "pid": self.pid,
                       "state": self.state, "protocol": control.PROTOCOL,
                       "actions": A.names(self.handlers)})

    def _drop(self, c: Client) -> None:
        if c in self.clients:
            self.clients.remove(c)
            self.sel.unregister(c.sock)
            c.sock.close()

    def _send(self, c: Client, msg: dict) -> None:
        try:
            c.sock.sendall(control.encode(msg))
        except OSError:
            self._drop(c)

    def _readable(self, c: Client) -> None:
        try:
            data, anc, _, _ = c.sock.recvmsg(65536, socket.CMSG_SPACE(16 * 4),
                                             socket.MSG_CMSG_CLOEXEC)
        except OSError:
            data, anc = b"", []
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                c.fds.extend(array.array("i", raw[:len(raw) - len(raw) % 4]))
        if not data:
            self._drop(c)
            return
        c.buf += data
        while b"\n" in c.buf and c in self.clients:
            line, c.buf = c.buf.split(b"\n", 1)
            self._send(c, self.handle_line(line, c))
        if len(c.buf) > control.MAX_LINE:
            self._drop(c)

    def _woken(self) -> None:
        try:
            os.read(self.wake_r, 64)
        except BlockingIOError:
            pass
        if self._signalled:
            self._stop(f"received {self._signalled}")
        ev = self._boot.take_event(self.traceparent) if self._boot is not None else None
        for c in list(self.clients) if ev else ():
            self._send(c, ev)
        if self.vm is not None and self.vm.wait(0) is not None:
            self.exit_info = {}  # leave the loop; _finish fills in the details

    # -- requests ---------------------------------------------------------------------
    def _take_files(self, req: dict, c: Client | None) -> None:
        """The fds that came with a request become the host files it names ("files")."""
        keys = req.get("files") or []
        fds = c.fds[:len(keys)] if c is not None else []
        if c is not None:
            del c.fds[:len(keys)]
        for key, fd in zip(keys, fds):
            if hostfiles.jailed() and isinstance(key, str):
                hostfiles.add(key, fd)
            else:
                os.close(fd)    # unjailed, the VMM opens by path

    def handle_line(self, line: bytes, c: Client | None = None) -> dict:
        """One request line -> its response. Decoding checks the arguments before anything
        runs; an unexpected exception from a handler is the VMM's bug (internal), never the
        caller's (so a TypeError deep in a device is not "bad arguments")."""
        try:
            req = control.decode(line)
        except control.ProtocolError as e:
            return {"id": None, "ok": False, "error": str(e), "kind": A.BAD_REQUEST}
        rid = req.get("id")
        self._take_files(req, c)
        try:
            action = A.decode_request(req)
            handler = self.handlers.get(type(action))
            if handler is None:
                raise A.Unsupported(f"this VMM does not implement {action.name} (it "
                                    f"implements: {', '.join(A.names(self.handlers))})")
            self._req_trace = trace.valid_traceparent(req.get("trace"))   # for start
            return {"id": rid, "ok": True, "result": A.encode_result(handler(action))}
        except A.ActionError as e:
            return {"id": rid, "ok": False, "error": str(e), "kind": e.kind}
        except Exception as e:  # never let one request kill the VMM
            log.exception("action %s failed", req.get("op"))
            return {"id": rid, "ok": False, "kind": A.INTERNAL,
                    "error": f"internal error in {req.get('op')}: {type(e).__name__}: {e}"}

    def _need(self, *states: str) -> None:
        if self.state not in states:
            raise A.WrongState(f"VM is {self.state}, needs {' or '.join(states)}")

    def status(self, a: A.Status) -> A.StatusResult:
        return A.StatusResult(
            vm_id=self.vm_id, pid=self.pid, state=self.state, counters=self.counters(),
            stats=self.vm.stats() if self.vm is not None else None,
            timeline=self.timeline.spans(self.vm), trace_id=trace.trace_id(self.traceparent),
            heavy_modules=[m for m in HEAVY_MODULES if m in sys.modules])

    def start(self, a: A.Start) -> A.StartResult:
        self._need(control.READY)
        self.timeline.mark("start_request")
        self.traceparent = self._req_trace
        self.log_handler.trace_id = trace.trace_id(self.traceparent)
        self.timeline.mark("build_start")
        if self.vm is None:
            self.vm = self.new_vm()
        try:
            self.vm.start()
            if self.after_start is not None:
                self.after_start()
        except Exception as e:
            log.error("start failed: %s: %s", type(e).__name__, e)
            self.exit_info = {"reason": "start-failed", "detail": f"{type(e).__name__}: {e}",
                              "failure": True, "exit_code": 1, "ran": False}
            raise A.Failed(f"start failed: {e}") from None
        self.state = control.RUNNING
        threading.Thread(target=self._wait_vm, name="vm-wait", daemon=True).start()
        self._boot = trace.BootWatch.start(self.vm, lambda: os.write(self.wake_w, b"b"))
        trace.wait_first_run(self.vm)   # so a finished start means the guest is running
        log.info("VM started")
        return A.StartResult(phases=dict(self.vm.phases), cmdline=self.vm.cmdline,
                             timeline=self.timeline.spans(self.vm))

    def new_vm(self):
        from .vm import MicroVm     # only now: a VMM that never starts stays small
        return MicroVm(self.cfg, vm_id=self.vm_id, console_out=self.console,
                       plugins=self.plugins, thread_hooks=self.thread_hooks)

    def plan(self, cfg) -> None:
        """Validate the devices now (a jailed VMM does this before the jail closes, while
        the host paths its checks look at are still there); `start` builds the rest."""
        self.cfg = cfg
        self.vm = self.new_vm()
        self.vm.build(("plugins",))

    def _wait_vm(self) -> None:
        self.vm.wait()
        os.write(self.wake_w, b"x")

    def pause(self, a: A.Pause) -> A.Done:
        self._need(control.RUNNING)
        self.vm.pause()
        self.state = control.PAUSED
        return A.Done()

    def resume(self, a: A.Resume) -> A.Done:
        self._need(control.PAUSED)
        self.vm.resume()
        self.state = control.RUNNING
        return A.Done()

    def stop(self, a: A.Stop) -> A.Done:
        self._stop(a.detail)
        return A.Done()

    def _stop(self, detail: str) -> None:
        if self.vm is None:     # never started: nothing to tear down
            self.exit_info = {"reason": "stopped", "detail": detail, "failure": False,
                              "exit_code": 0, "ran": False}
        else:
            self.vm.stop(detail)

    def ctrl_alt_del(self, a: A.CtrlAltDel) -> A.CtrlAltDelResult:
        self._need(control.RUNNING)
        dev = self.vm.devices.find(PowerButton)
        # None counts as sent (the capability's contract); False: it could not be queued
        return A.CtrlAltDelResult(sent=dev is not None and dev.send_ctrl_alt_del() is not False)

    def console_input(self, a: A.ConsoleInput) -> A.ConsoleInputResult:
        self._need(control.RUNNING, control.PAUSED)
        dev = self.vm.devices.find(Console)
        if dev is None:
            raise A.Unsupported("the VM has no console device")
        accepted = dev.console_input(a.data)
        return A.ConsoleInputResult(accepted=len(a.data) if accepted is None else accepted)

    # Live device changes (Firecracker's PATCH /drives and /network-interfaces), by the
    # device manager's stable ids.
    def _device(self, kind: str, dev_id: str, cap: type, what: str):
        self._need(control.RUNNING, control.PAUSED)
        try:
            dev = self.vm.devices.get(kind, dev_id)
        except LookupError as e:    # DeviceNotFound: its message lists what is attached
            raise A.NotFound(f"the VM has no {what} {dev_id!r}: {e}") from None
        if not isinstance(dev, cap):
            raise A.Unsupported(f"{what} {dev_id!r} ({kind}) does not support "
                                f"{cap.__name__} changes")
        return dev

    def update_drive(self, a: A.UpdateDrive) -> A.Done:
        dev = self._device("virtio-blk", a.drive_id, Drive, "drive")
        try:
            dev.update_backing_file(a.path_on_host)
        except OSError as e:
            raise A.Failed(f"cannot use {a.path_on_host!r}: {e.strerror}") from None
        return A.Done()

    def update_rate_limiter(self, a: A.UpdateRateLimiter) -> A.Done:
        iface, _, which = a.device_id.rpartition("/")
        if iface and which in ("rx", "tx"):
            dev = self._device("virtio-net", iface, RateLimited, "network interface")
        elif a.device_id == "entropy":
            dev, which = self._device("virtio-rng", "entropy", RateLimited, "entropy device"), None
        else:
            dev, which = self._device("virtio-blk", a.device_id, RateLimited, "drive"), None
        try:
            dev.update_rate_limiter(a.rate_limiter, which)
        except ConfigError as e:    # the device checks the limiter before changing anything
            raise A.BadRequest(f"rate_limiter for {a.device_id!r}: {e}") from None
        return A.Done()

    # MMDS (issue 10): the store belongs to the VM (MicroVm.mmds, made with its randomness
    # before any jail); a document put while READY is there before the first instruction.
    def put_metadata(self, a: A.PutMetadata) -> A.Done:
        return self._metadata(lambda mmds: mmds.put(a.document))

    def patch_metadata(self, a: A.PatchMetadata) -> A.Done:
        return self._metadata(lambda mmds: mmds.patch(a.patch))

    def _metadata(self, change) -> A.Done:
        self._need(control.READY, control.RUNNING, control.PAUSED)
        if self.vm is None:     # unjailed and not started yet: the VM object holds the store
            self.vm = self.new_vm()
        try:
            change(self.vm.mmds.mmds)   # under the store's lock (the loop thread serves it)
        except NotInitialized as e:
            raise A.WrongState(f"{e} (PUT a document before PATCHing it)") from None
        except (LimitExceeded, InvalidDocument) as e:
            raise A.BadRequest(str(e)) from None
        return A.Done()

    # Snapshots (issue 11; nodesvc.vmm.snapshot, docs/snapshots.md). Creating one needs a
    # paused VM, as in Firecracker; restoring replaces `start` in a fresh VMM whose config
    # is the snapshot's. Jailed, the node hands both files in with the request.
    def create_snapshot(self, a: A.CreateSnapshot) -> A.SnapshotResult:
        self._need(control.PAUSED)
        from .snapshot import SnapshotError, create_snapshot
        from .snapshot.files import open_for_write
        fds: list[int] = []
        try:
            fds = [open_for_write(a.snapshot_path), open_for_write(a.mem_file_path)]
            info = create_snapshot(self.vm, *fds, meta={"vm_id": self.vm_id})
        except (SnapshotError, OSError) as e:
            raise A.Failed(f"snapshot failed: {e}") from None
        finally:
            for fd in fds:
                os.close(fd)
        log.info("snapshot written: %d + %d bytes in %.0f ms", info["state_bytes"],
                 info["memory_written_bytes"], info["seconds"]["total"] * 1e3)
        return A.SnapshotResult(**info)

    def restore_snapshot(self, a: A.RestoreSnapshot) -> A.StartResult:
        self._need(control.READY)
        from .snapshot import SnapshotError, load_state
        from .snapshot.files import open_for_read
        from .snapshot.restore import restore_into
        self.timeline.mark("build_start")
        fds: list[int] = []
        try:
            fds = [open_for_read(a.snapshot_path), open_for_read(a.mem_file_path)]
            if self.vm is None:
                self.vm = self.new_vm()
            restore_into(self.vm, load_state(*fds), fds[1])
        except (SnapshotError, OSError) as e:     # refused before anything ran: still READY
            self.vm = None
            raise A.Failed(f"restore refused: {e}") from None
        finally:
            for fd in fds:
                os.close(fd)    # the memory mapping holds the file
        if not a.resume:
            self.vm.pause()     # vCPUs park before their first instruction
        self.vm.start()
        if self.after_start is not None:
            self.after_start()
        self.state = control.RUNNING if a.resume else control.PAUSED
        threading.Thread(target=self._wait_vm, name="vm-wait", daemon=True).start()
        log.info("VM restored from a snapshot of %s", self.vm.restored_from.get("vm_id"))
        return A.StartResult(phases=dict(self.vm.phases), timeline=self.timeline.spans(self.vm))

    def flush_metrics(self, a: A.FlushMetrics) -> A.Done:
        self.write_metrics()
        return A.Done()

    # -- figures and the end ------------------------------------------------------------
    def counters(self) -> dict:
        return {"console_bytes": self.console.written + self.console.dropped,
                "console_dropped_bytes": self.console.dropped,
                "log_dropped_lines": self.logs.dropped_writes,
                "metrics_dropped": self.metrics.dropped_writes}

    def write_metrics(self) -> None:
        rec = {"time": time.time(), **self.counters()}
        if self.vm is not None:
            st = self.vm.stats()
            rec.update(exits=st["exits"], time_in_kvm=st["time_in_kvm"],
                       first_run_after=st["first_run_after"])
        self.metrics.write_line(rec)

    def _finish(self) -> int:
        self.state = control.EXITING
        if self.vm is not None and self.exit_info.get("reason") != "start-failed":
            result = self.vm.shutdown()
            self.exit_info = {"reason": result.reason.value, "detail": result.detail,
                              "vcpu": result.vcpu, "failure": result.reason.is_failure,
                              "exit_code": result.reason.exit_code, "ran": True}
        log.info("VM exited: %s %s", self.exit_info["reason"], self.exit_info.get("detail", ""))
        self.write_metrics()
        write_exit_file(self.args.exit_file, self.exit_info)
        for c in list(self.clients):
            self._send(c, {"event": "exited", **self.exit_info})
        self.close()
        return int(self.exit_info.get("exit_code", 0))

    def close(self) -> None:
        for c in list(self.clients):
            self._drop(c)
        if self.listener is not None:
            self.listener.close()
        for f in (self.console, self.logs, self.metrics):
            f.close()


def write_exit_file(path: str | None, info: dict) -> None:
    """Atomically record why the VM ended, for a node service that was not listening."""
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(dict(info, time=time.time()), f)
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nodesvc.vmm.process",
                                description="Run one microVM driven over a control socket.")
    p.add_argument("--id", required=True, help="VM id")
    p.add_argument("--config-file", required=True, help="Firecracker-format JSON config")
    p.add_argument("--control-socket", required=True, help="Unix socket to listen on")
    p.add_argument("--console-fifo", help="FIFO for the serial console output")
    p.add_argument("--log-fifo", help="FIFO for JSON log lines")
    p.add_argument("--metrics-fifo", help="FIFO for JSON metrics records")
    p.add_argument("--exit-file", help="where to record why the VM ended")
    p.add_argument("--metrics-interval", type=float, default=10.0,
                   help="seconds between metrics records (0: only on request and at exit)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    exec_mode.add_arguments(p)  # --jailed and what it takes (nodesvc-jailer runs us)
    return p


def main(argv: list[str] | None = None) -> int:
    timeline = trace.Timeline()     # first thing: the node service's spawn span ends here
    args = build_parser().parse_args(argv)
    if args.jailed:
        return exec_mode.run_jailed(args, timeline)
    proc = VmmProcess(args, timeline)
    timeline.mark("config_start")
    from .config import load_config_file
    try:
        cfg = load_config_file(args.config_file)
        timeline.mark("config_end")
    except ConfigError as e:
        info = {"reason": "config-error", "detail": str(e), "failure": True, "exit_code": 2,
                "ran": False}
        write_exit_file(args.exit_file, info)
        print(f"nodesvc-vmm-process: {e}", file=sys.stderr)
        return 2
    proc.open()
    try:
        return proc.run(cfg)
    finally:
        proc.close()


if __name__ == "__main__":
    sys.exit(main())
