"""How nodectl prints things: tables and one-liners for people, JSON/YAML for programs
(the proto's field names, as `nodectl create -f` reads them back)."""

from __future__ import annotations

import json
import time
from typing import Any, Iterable

from google.protobuf import json_format

from nodesvc.api.v1 import nodesvc_pb2 as pb


def to_dict(msg) -> dict:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def dump(obj: Any, fmt: str) -> str:
    """obj (a message, or plain data) as 'json' or 'yaml' text."""
    data = to_dict(obj) if hasattr(obj, "DESCRIPTOR") else obj
    if fmt == "yaml":
        import yaml
        return yaml.safe_dump(data, sort_keys=False).rstrip("\n")
    return json.dumps(data, indent=2)


def state_name(state: int) -> str:
    return pb.VmState.Name(state).removeprefix("VM_STATE_")


def ago(ts) -> str:
    """A Timestamp as a short age: 5s, 3m, 2h, 4d."""
    if not ts.seconds:
        return "-"
    s = max(0, int(time.time() - ts.seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def labels_text(labels) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def vm_table(vms: Iterable[pb.Vm]) -> str:
    rows = [[vm.id, state_name(vm.state), str(vm.spec.machine.vcpus),
             f"{vm.spec.machine.memory_mib}Mi", str(vm.vmm_pid or "-"), str(vm.start_count),
             ago(vm.state_changed_at), labels_text(vm.labels), vm.reason or "-"]
            for vm in vms]
    return table(["ID", "STATE", "VCPUS", "MEMORY", "PID", "STARTS", "SINCE", "LABELS",
                  "REASON"], rows)


def size_text(n: int) -> str:
    """Bytes as people read them: 512B, 17KiB, 256MiB, 1.5GiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.1f}{unit}" if v < 10 and v != int(v) else f"{v:.0f}{unit}"
    return f"{n}B"


def snapshot_table(snaps: Iterable[pb.Snapshot]) -> str:
    rows = [[s.id, s.source_vm or "-", size_text(s.memory_bytes + s.state_bytes),
             size_text(s.disk_bytes), str(s.spec.machine.vcpus),
             f"{s.spec.machine.memory_mib}Mi", ago(s.created_at)] for s in snaps]
    return table(["ID", "SOURCE VM", "SIZE", "ON DISK", "VCPUS", "MEMORY", "AGE"], rows)


def event_line(ev: pb.VmEvent) -> str:
    kind = pb.VmEvent.Type.Name(ev.type).removeprefix("TYPE_")
    state = state_name(ev.vm.state)
    if ev.previous_state and ev.previous_state != ev.vm.state:
        state = f"{state_name(ev.previous_state)}->{state}"
    line = f"{ev.revision:<6} {kind:<13} {ev.vm.id:<20} {state}"
    return f"{line}  ({ev.vm.reason})" if ev.vm.reason else line


def _clock(ts) -> str:
    t = ts.seconds + ts.nanos / 1e9
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def log_line(entry: pb.LogEntry) -> str | None:
    if entry.HasField("log"):
        r = entry.log
        fields = " ".join(f"{k}={v}" for k, v in sorted(r.fields.items()))
        return f"{_clock(r.time)} {r.level:<7} {r.logger}: {r.message}" + \
            (f"  {fields}" if fields else "")
    if entry.HasField("metrics"):
        m = entry.metrics
        exits = ",".join(f"{k}={v}" for k, v in sorted(m.exits.items())) or "-"
        return (f"{_clock(m.time)} METRICS exits {exits}  kvm {m.time_in_kvm_seconds:.3f}s  "
                f"console {m.console_bytes}B (dropped {m.console_dropped_bytes}B)")
    return None     # a bare "dropped" notice: reported separately


def node_info_text(info: pb.NodeInfo) -> str:
    order = [n.removeprefix("VM_STATE_") for n in pb.VmState.keys()]
    states = ", ".join(f"{k} {v}" for k, v in sorted(
        info.vms_by_state.items(), key=lambda kv: order.index(kv[0])
        if kv[0] in order else 99) if v) or "none"
    versions = ", ".join(f"{k} {v}" for k, v in sorted(info.versions.items()))
    plugins = ", ".join(f"{p.name} ({p.distribution} {p.version})" for p in info.plugins)
    rows = [("hostname", info.hostname),
            ("cpus", f"{info.cpus} (vCPUs allocated {info.vcpus_allocated}, "
                     f"overcommit {info.cpu_overcommit:g}x)"),
            ("memory", f"{info.memory_mib} MiB usable, {info.memory_allocated_mib} MiB "
                       f"allocated, {info.memory_reserved_mib} MiB reserved for the host"),
            ("vms", states), ("revision", str(info.revision)), ("versions", versions),
            ("plugins", plugins or "none")]
    return "\n".join(f"{k + ':':<10} {v}" for k, v in rows)
