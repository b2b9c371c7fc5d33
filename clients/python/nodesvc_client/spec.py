"""Friendly dicts (YAML/JSON, with the proto's field names) -> nodesvc.v1 messages.

    spec = spec_from_dict({"machine": {"vcpus": 2, "memory_mib": 256},
                           "boot": {"kernel_path": "/srv/vmlinux"}})

Stricter than protobuf's json_format on purpose: every unknown key, wrong type or
out-of-range number is a SpecError naming the full path (`spec.drives[0].cache_typ:
unknown key (did you mean 'cache_type'?)`), raised before anything is sent. Enums take
their full name (CACHE_TYPE_WRITEBACK), the short one (writeback, any case) or a number.
"""

from __future__ import annotations

import difflib
import json
import os
from typing import Any

from google.protobuf.descriptor import FieldDescriptor as FD
from google.protobuf.message import Message

from nodesvc.api.v1 import nodesvc_pb2 as pb

from .errors import SpecError

_INT_RANGES = {FD.TYPE_UINT32: (0, 2**32 - 1), FD.TYPE_UINT64: (0, 2**64 - 1),
               FD.TYPE_INT32: (-2**31, 2**31 - 1), FD.TYPE_INT64: (-2**63, 2**63 - 1)}
# Host paths a spec file may give relative to its own directory.
_PATH_FIELDS = (("boot", "kernel_path"), ("boot", "initrd_path"), ("vsock", "uds_path"))


def fill(msg: Message, data: Any, path: str) -> Message:
    """Set `msg`'s fields from `data` (a mapping with the proto's field names)."""
    if not isinstance(data, dict):
        raise SpecError(f"{path}: must be a mapping, got {_kind(data)}")
    fields = msg.DESCRIPTOR.fields_by_name
    for key, value in data.items():
        f = fields.get(key) if isinstance(key, str) else None
        if f is None:
            raise SpecError(f"{path}.{key}: unknown key{_hint(str(key), fields)}")
        where = f"{path}.{key}"
        if value is None:        # `key:` with nothing after it in YAML: leave unset
            continue
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            _fill_map(getattr(msg, key), f.message_type, value, where)
        elif f.is_repeated:
            if not isinstance(value, list):
                raise SpecError(f"{where}: must be a list, got {_kind(value)}")
            target = getattr(msg, key)
            for i, item in enumerate(value):
                if f.message_type is not None:
                    fill(target.add(), item, f"{where}[{i}]")
                else:
                    target.append(_scalar(f, item, f"{where}[{i}]"))
        elif f.message_type is not None:
            sub = getattr(msg, key)
            sub.SetInParent()    # `vsock: {}` still means "present"
            fill(sub, value, where)
        else:
            setattr(msg, key, _scalar(f, value, where))
    return msg


def _fill_map(target, entry, value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise SpecError(f"{where}: must be a mapping, got {_kind(value)}")
    kf, vf = entry.fields_by_name["key"], entry.fields_by_name["value"]
    for k, v in value.items():
        target[_scalar(kf, k, f"{where} key")] = _scalar(vf, v, f"{where}[{k!r}]")


def _scalar(f: FD, v: Any, where: str) -> Any:
    t = f.type
    if t == FD.TYPE_BOOL:
        if not isinstance(v, bool):
            raise SpecError(f"{where}: must be true or false, got {v!r}")
        return v
    if t in _INT_RANGES:
        lo, hi = _INT_RANGES[t]
        if isinstance(v, bool) or not isinstance(v, int):
            raise SpecError(f"{where}: must be an integer, got {v!r}")
        if not lo <= v <= hi:
            raise SpecError(f"{where}: must be between {lo} and {hi}, got {v}")
        return v
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpecError(f"{where}: must be a number, got {v!r}")
        return float(v)
    if t == FD.TYPE_STRING:
        if not isinstance(v, str):
            raise SpecError(f"{where}: must be a string, got {v!r}")
        return v
    if t == FD.TYPE_ENUM:
        return enum_value(f.enum_type, v, where)
    raise SpecError(f"{where}: fields of this type cannot be given in a spec")


def enum_value(enum, v: Any, where: str) -> int:
    """An enum value from its number, full name or short name (any case)."""
    if isinstance(v, int) and not isinstance(v, bool) and v in enum.values_by_number:
        return v
    if isinstance(v, str):
        # Short names drop the shared prefix up to its last '_' (VM_STATE_, CACHE_TYPE_).
        prefix = os.path.commonprefix(list(enum.values_by_name))
        prefix = prefix[:prefix.rfind("_") + 1]
        for name, val in enum.values_by_name.items():
            if v.upper() in (name, name[len(prefix):]):
                return val.number
    names = [n for n in enum.values_by_name if not n.endswith("_UNSPECIFIED")]
    raise SpecError(f"{where}: must be one of {', '.join(names)}, got {v!r}")


def _hint(key: str, fields) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; known keys: {', '.join(fields)}"


def _kind(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string"}.get(type(v), repr(v))


def spec_from_dict(data: dict) -> pb.VmSpec:
    """A VmSpec from a dict with the proto's field names."""
    return fill(pb.VmSpec(), data, "spec")


def create_request_from_dict(data: dict) -> pb.CreateVmRequest:
    """A create document: either a CreateVmRequest (vm_id, labels, spec, start) or a bare
    VmSpec (machine, boot, ...), told apart by its keys."""
    if not isinstance(data, dict):
        raise SpecError(f"spec file: must be a mapping, got {_kind(data)}")
    if {"vm_id", "spec", "labels", "start"} & data.keys():
        return fill(pb.CreateVmRequest(), data, "request")
    return pb.CreateVmRequest(spec=spec_from_dict(data))


def load_file(path: str) -> Any:
    """A YAML or JSON document ('-' reads stdin). YAML is a superset of JSON, so one
    loader reads both; JSON files give JSON's error messages."""
    try:
        if path == "-":
            import sys
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e.strerror}") from None
    try:
        if path.endswith(".json"):
            return json.loads(text)
        import yaml
        return yaml.safe_load(text)
    except ValueError as e:      # json.JSONDecodeError
        raise SpecError(f"{path}: invalid JSON: {e}") from None
    except Exception as e:       # yaml.YAMLError; one line for the CLI
        raise SpecError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None


def _resolve_paths(req: pb.CreateVmRequest, base: str) -> None:
    # Relative host paths in a file are relative to the file, as in docker-compose.
    s = req.spec
    for section, key in _PATH_FIELDS:
        if s.HasField(section):
            sub = getattr(s, section)
            if getattr(sub, key) and not os.path.isabs(getattr(sub, key)):
                setattr(sub, key, os.path.normpath(os.path.join(base, getattr(sub, key))))
    for d in s.drives:
        if d.path_on_host and not os.path.isabs(d.path_on_host):
            d.path_on_host = os.path.normpath(os.path.join(base, d.path_on_host))


def create_request_from_file(path: str) -> pb.CreateVmRequest:
    req = create_request_from_dict(load_file(path))
    _resolve_paths(req, os.path.dirname(os.path.abspath(path)) if path != "-" else os.getcwd())
    return req


def spec_from_file(path: str) -> pb.VmSpec:
    """A VmSpec from a YAML or JSON file (a bare spec, or a create document's `spec`);
    relative host paths are resolved against the file's directory."""
    return create_request_from_file(path).spec
