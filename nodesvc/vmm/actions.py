"""The VMM's actions: one dataclass per thing the node service can ask a VMM process to do,
each with a typed result and typed errors, and their encoding on the control socket.

Like Firecracker's `VmmAction` (src/vmm/src/rpc_interface.rs): the node builds an action
object (`actions.UpdateDrive("data", "/img/b")`), the client encodes it as a request line,
the VMM decodes and checks it *before* anything runs, and dispatches on its class. A new
operation is one class here plus one handler in nodesvc.vmm.process.

    request   {"id": 1, "op": "update_drive", "args": {"drive_id": "data", "path_on_host": ...}}
    response  {"id": 1, "ok": true, "result": {}}
              {"id": 1, "ok": false, "error": "...", "kind": "wrong-state"}

Argument checks are strict (unknown field, missing field, wrong JSON type: `bad-request`,
naming the field); result decoding is lenient (a newer VMM may add result fields). An
exception escaping a handler that is not an `ActionError` is a bug in the VMM and is
reported as `internal`, whatever its type: a TypeError raised *inside* an action is never
mistaken for bad arguments.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

# --- errors -------------------------------------------------------------------------------

# Error kinds on the wire; the node service maps each to one of its domain errors.
WRONG_STATE, BAD_REQUEST = "wrong-state", "bad-request"
UNSUPPORTED, NOT_FOUND = "unsupported", "not-found"
FAILED, INTERNAL = "failed", "internal"


class ActionError(Exception):
    """An action refused or failed; `kind` says how (one of the kinds above)."""
    kind: ClassVar[str] = FAILED

    def __init__(self, msg: str):
        super().__init__(msg)


class WrongState(ActionError):
    """The VM is not in a state that allows the action (e.g. pause while paused)."""
    kind = WRONG_STATE


class BadRequest(ActionError):
    """The request itself is wrong: unknown action, unknown/missing/mistyped argument."""
    kind = BAD_REQUEST


class Unsupported(ActionError):
    """This VMM (or this VM's devices) cannot do it: an unimplemented action, a device
    without the capability."""
    kind = UNSUPPORTED


class NotFound(ActionError):
    """The action names a device the VM does not have."""
    kind = NOT_FOUND


class Failed(ActionError):
    """The action ran and failed (a backing file that cannot be opened, a failed start),
    or the VMM could not be reached."""
    kind = FAILED


class Internal(ActionError):
    """A bug in the VMM: an unexpected exception while the action ran."""
    kind = INTERNAL


_ERRORS = {c.kind: c for c in (WrongState, BadRequest, Unsupported, NotFound, Failed, Internal)}


def error(kind: str | None, msg: str) -> ActionError:
    """The typed error for a failed response (an unknown kind is a plain failure)."""
    return _ERRORS.get(kind or FAILED, Failed)(msg)


# --- results ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Done:
    """The result of an action that only succeeds or fails."""


@dataclass(frozen=True)
class StartResult:
    phases: dict = field(default_factory=dict)      # build phase -> seconds
    cmdline: str = ""
    timeline: list = field(default_factory=list)    # span records (nodesvc.vmm.trace)


@dataclass(frozen=True)
class CtrlAltDelResult:
    sent: bool = False      # False: the VM has no i8042 keyboard to press it on


@dataclass(frozen=True)
class ConsoleInputResult:
    accepted: int = 0       # bytes the console took (the rest was dropped: its FIFO is full)


@dataclass(frozen=True)
class SnapshotResult:
    state_bytes: int = 0            # the state file's size
    memory_bytes: int = 0           # the memory file's (apparent) size
    memory_written_bytes: int = 0   # non-zero data in it (the rest are holes)
    seconds: dict = field(default_factory=dict)     # part -> seconds


@dataclass(frozen=True)
class StatusResult:
    vm_id: str = ""
    pid: int = 0
    state: str = ""
    counters: dict = field(default_factory=dict)
    stats: dict | None = None
    timeline: list = field(default_factory=list)
    trace_id: str | None = None
    heavy_modules: list = field(default_factory=list)


# --- actions ------------------------------------------------------------------------------

class Action:
    """Base of every action. Subclasses are frozen dataclasses registered with `_action`."""
    name: ClassVar[str]
    result: ClassVar[type]


ACTIONS: dict[str, type[Action]] = {}   # wire name -> class, in declaration order


def _action(name: str, result: type = Done):
    def register(cls):
        cls = dataclass(frozen=True)(cls)
        cls.name, cls.result = name, result
        ACTIONS[name] = cls
        return cls
    return register


@_action("status", StatusResult)
class Status(Action):
    """State, pid, stats, counters and the timeline of the run."""


@_action("start", StartResult)
class Start(Action):
    """Build the VM and start its vCPUs (once)."""


@_action("pause")
class Pause(Action):
    """Park the vCPUs."""


@_action("resume")
class Resume(Action):
    """Unpark the vCPUs."""


@_action("stop")
class Stop(Action):
    """End the VM now; `detail` becomes the exit reason's detail."""
    detail: str = "stop requested"


@_action("ctrl_alt_del", CtrlAltDelResult)
class CtrlAltDel(Action):
    """Press Ctrl-Alt-Del on the i8042 keyboard (the guest's cue to shut down)."""


@_action("console_input", ConsoleInputResult)
class ConsoleInput(Action):
    """Feed bytes to the serial console (base64 on the wire)."""
    data: bytes


@_action("flush_metrics")
class FlushMetrics(Action):
    """Write one metrics record now."""


@_action("update_drive")
class UpdateDrive(Action):
    """Swap a drive's backing file (Firecracker's PATCH /drives)."""
    drive_id: str
    path_on_host: str


@_action("update_rate_limiter")
class UpdateRateLimiter(Action):
    """Replace a device's limiter, in Firecracker's format (None: no limiter). `device_id`
    is a drive_id, "<iface_id>/rx" or "<iface_id>/tx", or "entropy"."""
    device_id: str
    rate_limiter: dict | None


# Declared so their names are reserved and the node can ask whether a VMM supports them;
# no VMM implements them yet, so none advertises them.
@_action("put_metadata")
class PutMetadata(Action):
    """Replace the MMDS document (issue 10)."""
    document: dict


@_action("patch_metadata")
class PatchMetadata(Action):
    """Merge-patch the MMDS document, RFC 7396 (issue 10)."""
    patch: dict


@_action("create_snapshot", SnapshotResult)
class CreateSnapshot(Action):
    """Write the paused VM's state and memory (Firecracker's PUT /snapshot/create). A
    jailed VMM needs both files handed over with the request (`files`)."""
    snapshot_path: str
    mem_file_path: str


@_action("restore_snapshot", StartResult)
class RestoreSnapshot(Action):
    """Instead of `start`: build the VM from a snapshot and run it (`resume`) or leave it
    paused (Firecracker's PUT /snapshot/load with resume_vm). The VMM's config must be the
    snapshot's (with a clone's overrides); jailed, both files come with the request."""
    snapshot_path: str
    mem_file_path: str
    resume: bool = True


#: What a protocol-1 VMM (whose hello lists no actions) could do: every action it had.
PROTOCOL_1_ACTIONS = frozenset({
    "status", "start", "pause", "resume", "stop", "ctrl_alt_del", "console_input",
    "flush_metrics", "update_drive", "update_rate_limiter"})


# --- encoding -----------------------------------------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _options(tp: Any) -> tuple:
    """The member types of `X | Y` (or just `tp`)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _type_name(tp: Any) -> str:
    if len(_options(tp)) > 1:
        return " or ".join(_type_name(a) for a in _options(tp))
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            dict: "an object", list: "an array", bytes: "a base64 string",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _from_json(value: Any, tp: Any, where: str) -> Any:
    """Check one decoded JSON value against a field's type; bytes arrive as base64."""
    for opt in _options(tp):
        if opt is type(None) and value is None:
            return None
        if opt is bytes and isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest(f"{where}: not valid base64") from None
        if opt is bool and isinstance(value, bool):
            return value
        if opt is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if opt is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if opt in (str, dict, list) and isinstance(value, opt):
            return value
    raise BadRequest(f"{where}: must be {_type_name(tp)}, got {_json_type(value)}")


def _json_type(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            dict: "an object", list: "an array", type(None): "null"}.get(type(v), type(v).__name__)


def _to_json(value: Any) -> Any:
    return base64.b64encode(value).decode() if isinstance(value, bytes) else value


def encode_request(action: Action, rid: int, trace: str | None = None) -> dict:
    """The request message for `action` (nodesvc.vmm.control.encode makes it a line)."""
    args = {f.name: _to_json(getattr(action, f.name)) for f, _ in _fields(type(action))}
    msg = {"id": rid, "op": action.name, "args": args}
    if trace:
        msg["trace"] = trace
    return msg


def decode_request(msg: dict) -> Action:
    """The action a request message asks for; BadRequest (naming the problem) otherwise.
    Nothing runs before this succeeds."""
    name = msg.get("op")
    cls = ACTIONS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise BadRequest(f"unknown action {name!r} (known: {', '.join(ACTIONS)})")
    args = msg.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise BadRequest(f"{name}: args must be an object, got {_json_type(args)}")
    fields = _fields(cls)
    known = {f.name for f, _ in fields}
    unknown = sorted(set(args) - known)
    if unknown:
        have = ", ".join(sorted(known)) or "none"
        raise BadRequest(f"{name}: unknown argument {unknown[0]!r} (arguments: {have})")
    values = {}
    for f, tp in fields:
        if f.name in args:
            values[f.name] = _from_json(args[f.name], tp, f"{name}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise BadRequest(f"{name}: missing argument {f.name!r}")
    return cls(**values)


def encode_result(result: Any) -> dict:
    return {f.name: _to_json(getattr(result, f.name)) for f, _ in _fields(type(result))}


def decode_result(action: Action | type[Action], result: dict | None) -> Any:
    """The typed result of `action` from a response's "result"; fields this side does not
    know are ignored, missing ones take their defaults."""
    cls = action.result
    result = result if isinstance(result, dict) else {}
    return cls(**{f.name: result[f.name] for f, _ in _fields(cls) if f.name in result})


def names(classes) -> list[str]:
    """Wire names of action classes, for the hello's list."""
    return [c.name for c in classes]
