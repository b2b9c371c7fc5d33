"""Protobuf <-> core conversions. The core speaks plain dicts and dataclasses; the wire
speaks nodesvc.v1 messages. Specs cross as proto-JSON dicts with the proto's field names."""

from __future__ import annotations

import json

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from ..api.v1 import nodesvc_pb2 as pb
from ..core.errors import InvalidSpec
from ..core.events import Event
from ..core.model import VmRecord, VmState


def to_dict(msg) -> dict:
    # Every field present (0, "", [] included) so the core can tell "0 vCPUs" from "unset".
    return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def spec_from_proto(req) -> dict | None:
    return to_dict(req.spec) if req.HasField("spec") else None


def limiter_from_proto(req) -> dict | None:
    return to_dict(req.rate_limiter) if req.HasField("rate_limiter") else None


def ts(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def state_to_proto(state: VmState | None) -> int:
    return pb.VmState.Value(f"VM_STATE_{state.value}") if state else pb.VM_STATE_UNSPECIFIED


def state_from_proto(value: int) -> VmState | None:
    name = pb.VmState.Name(value)
    return None if value == pb.VM_STATE_UNSPECIFIED else VmState(name[len("VM_STATE_"):])


def vm_to_proto(rec: VmRecord | dict) -> pb.Vm:
    if isinstance(rec, dict):
        rec = VmRecord.from_json(rec)
    return pb.Vm(id=rec.id, spec=json_format.ParseDict(rec.spec, pb.VmSpec()),
                 labels=rec.labels, state=state_to_proto(rec.state), reason=rec.reason,
                 created_at=ts(rec.created_at), state_changed_at=ts(rec.state_changed_at),
                 vmm_pid=rec.vmm.pid if rec.vmm else 0, revision=rec.revision,
                 start_count=rec.start_count)


def event_to_proto(ev: Event) -> pb.VmEvent:
    return pb.VmEvent(revision=ev.revision, type=pb.VmEvent.Type.Value(f"TYPE_{ev.type}"),
                      vm=vm_to_proto(ev.vm), previous_state=state_to_proto(ev.previous_state),
                      time=ts(ev.time))


def log_entry(rec: dict) -> pb.LogEntry:
    t = ts(float(rec.get("time") or 0))
    if rec.get("kind") == "metrics":
        extra = {k: v for k, v in rec.items() if k != "kind"}
        return pb.LogEntry(metrics=pb.MetricsRecord(
            time=t, exits={str(k): int(v) for k, v in (rec.get("exits") or {}).items()},
            time_in_kvm_seconds=float(rec.get("time_in_kvm") or 0),
            console_bytes=int(rec.get("console_bytes") or 0),
            console_dropped_bytes=int(rec.get("console_dropped_bytes") or 0),
            log_dropped_lines=int(rec.get("log_dropped_lines") or 0),
            metrics_dropped=int(rec.get("metrics_dropped") or 0),
            json=json.dumps(extra, sort_keys=True)))
    fields = rec.get("fields") if isinstance(rec.get("fields"), dict) else {}
    return pb.LogEntry(log=pb.LogRecord(
        time=t, level=str(rec.get("level", "")), logger=str(rec.get("logger", "")),
        message=str(rec.get("message", "")), fields={str(k): str(v) for k, v in fields.items()}))


def node_info(d: dict) -> pb.NodeInfo:
    d = dict(d)
    plugins = [pb.Plugin(**p) for p in d.pop("plugins")]
    return pb.NodeInfo(plugins=plugins, **d)


def snapshot_to_proto(meta: dict) -> pb.Snapshot:
    return pb.Snapshot(
        id=meta["id"], source_vm=meta.get("source_vm", ""), created_at=ts(meta["created_at"]),
        state_path=meta["state_path"], mem_path=meta["mem_path"],
        state_bytes=int(meta.get("state_bytes") or 0),
        memory_bytes=int(meta.get("memory_bytes") or 0),
        disk_bytes=int(meta.get("disk_bytes") or 0),
        create_seconds=float(meta.get("create_seconds") or 0),
        spec=json_format.ParseDict(meta.get("spec") or {}, pb.VmSpec()),
        labels=meta.get("labels") or {})


def restore_overrides(req) -> dict:
    """RestoreVmRequest's overrides as the core takes them (nodesvc.core.snapshots)."""
    out: dict = {}
    ifaces = []
    for n, o in enumerate(req.network_overrides):
        if not o.iface_id:
            raise InvalidSpec(f"network_overrides[{n}].iface_id", "required")
        if o.iface_id in (i["iface_id"] for i in ifaces):
            raise InvalidSpec(f"network_overrides[{n}].iface_id",
                              f"{o.iface_id!r} is overridden twice")
        ifaces.append({"iface_id": o.iface_id, "host_dev_name": o.host_dev_name,
                       "guest_mac": o.guest_mac})
    if ifaces:
        out["network_interfaces"] = ifaces
    if req.vsock_uds_path:
        out["vsock_uds_path"] = req.vsock_uds_path
    return out
