"""The interface between the node service and a VMM process (no grpc here): the control
protocol, and the writers of the FIFOs the VMM streams its console, logs and metrics on.

Newline-delimited JSON over a Unix stream socket that the VMM listens on. The node
service connects (again after it restarts); the VMM serves one request at a time. The
requests are the typed actions of nodesvc.vmm.actions (which also encodes them):

    request   {"id": 1, "op": "pause", "args": {}}
    response  {"id": 1, "ok": true, "result": {...}}
              {"id": 1, "ok": false, "error": "VM is paused, needs running", "kind": "wrong-state"}
    event     {"event": "hello", "vm_id": "web-1", "pid": 42, "state": "ready", "protocol": 2,
               "actions": ["status", "start", "pause", ...]}
              {"event": "exited", "reason": "guest-reset", "detail": "...", "failure": false,
               "exit_code": 0}

Error kinds: wrong-state, bad-request (the request is malformed: checked before the action
runs), unsupported, not-found (no such device), failed (the action failed), internal (a bug
in the VMM). `hello` is sent on every new connection (so a re-adopting node service can
check it reached the right VM) and lists the actions this VMM implements: the node asks
for nothing else. Protocol 1 (no "actions", no not-found/internal kinds) is still
understood by the node service, for VMMs that outlived an upgrade. `exited` is pushed to
every connection when the VM ends, just before the process exits.

Tracing (nodesvc.vmm.trace): a request may carry "trace", a W3C traceparent. The `start`
reply has "timeline": span records of the run's phases (spawn, config, build phases, first
KVM_RUN) that the node service turns into child spans of the traced RPC. When the guest
writes the boot-timer device the VMM pushes, with the start's trace context,

    event     {"event": "boot-timer", "boot_time": 0.8, "trace": "00-<trace id>-<span id>-01",
               "spans": [{"name": "vmm.boot_timer", "start_ns": ..., "end_ns": ...}]}
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading

from .actions import (BAD_REQUEST, FAILED, INTERNAL, NOT_FOUND,  # noqa: F401 (re-exported)
                      UNSUPPORTED, WRONG_STATE)

PROTOCOL = 2         # 2: hello lists "actions"; error kinds not-found and internal
MAX_LINE = 1 << 20   # a request or response larger than this is a protocol error

# VMM process states as reported in `hello` and `status`.
READY, RUNNING, PAUSED, EXITING = "ready", "running", "paused", "exiting"


class ProtocolError(Exception):
    """A malformed line on the control socket."""


def encode(msg: dict) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict:
    try:
        msg = json.loads(line)
    except ValueError as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("a message must be a JSON object")
    return msg


# Unix socket paths are limited to 107 bytes; state dirs (and pytest's tmp dirs) can be
# longer. Binding relative to the directory and connecting through /proc/self/fd both
# sidestep the limit without changing where the socket lives.
_SUN_PATH_MAX = 107


def bind_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        sock.bind(path)
    else:
        cwd = os.open(".", os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.chdir(os.path.dirname(path) or ".")
            sock.bind(os.path.basename(path))
        finally:
            os.fchdir(cwd)
            os.close(cwd)
    return sock


class ShortPath:
    """A connectable path for `path`: itself if short, else via an O_PATH dir fd."""

    def __init__(self, path: str):
        self._fd = None
        if len(os.fsencode(path)) <= _SUN_PATH_MAX:
            self.path = path
        else:
            self._fd = os.open(os.path.dirname(path), os.O_PATH | os.O_CLOEXEC)
            self.path = f"/proc/self/fd/{self._fd}/{os.path.basename(path)}"

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# --- FIFOs: console bytes, and JSON lines for logs and metrics ------------------------------

PIPE_BUF = 4096               # writes up to this size are atomic on a pipe
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


log = logging.getLogger("nodesvc.vmm.control")


class FifoWriter:
    """Non-blocking writes to a FIFO; what doesn't fit is dropped and counted."""

    def __init__(self, path: str | None, pipe_size: int | None = None):
        self.fd = None
        self.written = self.dropped = self.dropped_writes = 0
        self._lock = threading.Lock()
        if path:
            self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            if pipe_size:
                try:
                    fcntl.fcntl(self.fd, _F_SETPIPE_SZ, pipe_size)
                except OSError:
                    pass    # above /proc/sys/fs/pipe-max-size: keep the default

    def write(self, data: bytes) -> None:
        with self._lock:
            if self.fd is None:
                return
            try:
                n = os.write(self.fd, data)
            except OSError as e:    # EAGAIN: pipe full; anything else: reader gone for good
                if e.errno not in (errno.EAGAIN, errno.EPIPE):
                    log.debug("fifo write failed: %s", e)
                n = 0
            self.written += n
            if n < len(data):
                self.dropped += len(data) - n
                self.dropped_writes += 1

    def write_line(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"), default=str).encode() + b"\n"
        if len(line) > PIPE_BUF:    # only whole lines are atomic: shorten the message
            record = dict(record, message=str(record.get("message", ""))[:1024] + "...",
                          truncated=True)
            line = json.dumps(record, separators=(",", ":"), default=str).encode()[:PIPE_BUF - 1]
            line += b"\n"
        self.write(line)

    def close(self) -> None:
        with self._lock:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


class JsonLogHandler(logging.Handler):
    """Log records as JSON lines on the log FIFO."""

    def __init__(self, fifo: FifoWriter, vm_id: str):
        super().__init__()
        self.fifo, self.vm_id = fifo, vm_id
        self.trace_id: str | None = None    # set once a traced `start` arrives

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_info:
                msg += "\n" + logging.Formatter().formatException(record.exc_info)
            fields = {"vm_id": self.vm_id, "thread": record.threadName}
            if self.trace_id:   # lets a log line be found from its trace, and back
                fields["trace_id"] = self.trace_id
            self.fifo.write_line({"time": record.created, "level": record.levelname,
                                  "logger": record.name, "message": msg, "fields": fields})
        except Exception:
            self.handleError(record)
