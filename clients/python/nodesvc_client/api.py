"""The wrapper's methods, written once for both clients.

Each method builds its request and hands it to `_unary`/`_stream`/`_bidi`, which the sync
client implements by calling (returning results and Streams) and the asyncio client by
awaiting (returning coroutines and AsyncStreams). So `NodeClient.get_vm(id)` returns a Vm
and `AsyncNodeClient.get_vm(id)` must be awaited for one.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Iterable, Mapping

from google.protobuf.duration_pb2 import Duration

from nodesvc.api.v1 import nodesvc_pb2 as pb

from .errors import SpecError
from .spec import enum_value, fill, spec_from_dict


class VmList(list):
    """ListVms' VMs, plus the revision of the snapshot (watch from it to miss nothing)."""
    revision: int = 0


def as_spec(spec: pb.VmSpec | Mapping) -> pb.VmSpec:
    if isinstance(spec, pb.VmSpec):
        return spec
    if isinstance(spec, Mapping):
        return spec_from_dict(dict(spec))
    raise SpecError(f"spec: must be a VmSpec or a mapping, got {type(spec).__name__}")


def as_labels(labels: Mapping[str, str] | None, field: str = "labels") -> dict[str, str]:
    return dict(fill(pb.ListVmsRequest(), {"label_selector": dict(labels or {})},
                     field).label_selector)


def as_states(state: Any) -> list[int]:
    """None, one state or several; each a VmState number or (short) name ("running")."""
    if state is None:
        return []
    if isinstance(state, (str, int)):
        state = [state]
    return [enum_value(pb.VmState.DESCRIPTOR, s, "state") for s in state]


def as_duration(grace: float | datetime.timedelta | None) -> Duration | None:
    if grace is None:
        return None
    d = Duration()
    if isinstance(grace, datetime.timedelta):
        d.FromTimedelta(grace)
    else:
        d.FromNanoseconds(int(float(grace) * 1e9))
    return d


def _json_text(doc: Any, field: str) -> str:
    if isinstance(doc, str):
        return doc
    try:
        return json.dumps(doc)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{field}: not JSON-serializable: {e}") from None


def _doc(resp: pb.MetadataResponse) -> Any:
    return json.loads(resp.json) if resp.json else {}


def _vm(resp) -> pb.Vm:
    return resp.vm


def _vm_list(resp: pb.ListVmsResponse) -> VmList:
    out = VmList(resp.vms)
    out.revision = resp.revision
    return out


def _data(msg: pb.ConsoleOutput) -> bytes | None:
    return msg.data or None


SNAPSHOT_TIMEOUT = 300.0     # writing a large memory file takes a while


def as_network_overrides(items: Iterable | None) -> list[pb.NetworkOverride]:
    """NetworkOverride messages, or mappings {"iface_id", "host_dev_name", "guest_mac"}."""
    out = []
    for n, o in enumerate(items or ()):
        if isinstance(o, Mapping):
            o = fill(pb.NetworkOverride(), dict(o), f"network_overrides[{n}]")
        elif not isinstance(o, pb.NetworkOverride):
            raise SpecError(f"network_overrides[{n}]: must be a NetworkOverride or a mapping, "
                            f"got {type(o).__name__}")
        out.append(o)
    return out


class Api:
    """Every NodeService RPC as a method (see the proto for the semantics of each)."""

    # -- lifecycle ---------------------------------------------------------------------------
    def create_vm(self, vm_id: str, spec: pb.VmSpec | Mapping, *,
                  labels: Mapping[str, str] | None = None, start: bool = False,
                  timeout: float | None = None):
        """Record a VM (CREATED; RUNNING too with start=True). -> Vm"""
        req = pb.CreateVmRequest(vm_id=vm_id, spec=as_spec(spec), labels=as_labels(labels),
                                 start=start)
        return self._unary("CreateVm", req, _vm, timeout)

    def start_vm(self, vm_id: str, *, timeout: float | None = None):
        return self._unary("StartVm", pb.StartVmRequest(vm_id=vm_id), _vm, timeout)

    def stop_vm(self, vm_id: str, *, grace: float | datetime.timedelta | None = None,
                force: bool = False, timeout: float | None = None):
        """Ctrl-Alt-Del, then force after `grace` seconds (server default 10); force=True
        skips the Ctrl-Alt-Del. Returns the STOPPED Vm."""
        req = pb.StopVmRequest(vm_id=vm_id, grace_period=as_duration(grace), force=force)
        return self._unary("StopVm", req, _vm, timeout)

    def pause_vm(self, vm_id: str, *, timeout: float | None = None):
        return self._unary("PauseVm", pb.PauseVmRequest(vm_id=vm_id), _vm, timeout)

    def resume_vm(self, vm_id: str, *, timeout: float | None = None):
        return self._unary("ResumeVm", pb.ResumeVmRequest(vm_id=vm_id), _vm, timeout)

    def delete_vm(self, vm_id: str, *, timeout: float | None = None):
        return self._unary("DeleteVm", pb.DeleteVmRequest(vm_id=vm_id), lambda r: None,
                           timeout)

    def get_vm(self, vm_id: str, *, timeout: float | None = None):
        return self._unary("GetVm", pb.GetVmRequest(vm_id=vm_id), _vm, timeout)

    def list_vms(self, labels: Mapping[str, str] | None = None, state: Any = None, *,
                 timeout: float | None = None):
        """VMs whose labels include `labels`, in any of `state`. -> VmList (.revision)"""
        req = pb.ListVmsRequest(label_selector=as_labels(labels, "label_selector"),
                                states=as_states(state))
        return self._unary("ListVms", req, _vm_list, timeout)

    def watch_vms(self, since_revision: int | None = None, *,
                  labels: Mapping[str, str] | None = None, vm_id: str = "",
                  timeout: float | None = None):
        """Stream of VmEvent: after `since_revision` (replayed), or from now on."""
        req = pb.WatchVmsRequest(since_revision=since_revision, vm_id=vm_id,
                                 label_selector=as_labels(labels, "label_selector"))
        return self._stream("WatchVms", req, lambda ev: ev, timeout)

    # -- live device changes -------------------------------------------------------------
    def update_drive(self, vm_id: str, drive_id: str, path_on_host: str, *,
                     timeout: float | None = None):
        req = pb.UpdateDriveRequest(vm_id=vm_id, drive_id=drive_id, path_on_host=path_on_host)
        return self._unary("UpdateDrive", req, _vm, timeout)

    def update_rate_limiter(self, vm_id: str, device_id: str,
                            rate_limiter: pb.RateLimiter | Mapping | None, *,
                            timeout: float | None = None):
        """Replace a device's limiter (None removes it)."""
        if isinstance(rate_limiter, Mapping):
            rate_limiter = fill(pb.RateLimiter(), dict(rate_limiter), "rate_limiter")
        req = pb.UpdateRateLimiterRequest(vm_id=vm_id, device_id=device_id,
                                          rate_limiter=rate_limiter)
        return self._unary("UpdateRateLimiter", req, _vm, timeout)

    # -- console and logs ------------------------------------------------------------------
    def stream_console(self, vm_id: str, *, include_history: bool = False,
                       timeout: float | None = None):
        """Stream of console output bytes; ends when the VMM process ends. Streams take
        no default deadline: `timeout` (seconds) bounds the whole stream."""
        req = pb.StreamConsoleRequest(vm_id=vm_id, include_history=include_history)
        return self._stream("StreamConsole", req, _data, timeout)

    def attach_console(self, vm_id: str, input: Iterable[bytes] = (), *,
                       include_history: bool = False, timeout: float | None = None):
        """Interactive console: sends each bytes item of `input` as keystrokes, returns a
        Stream of output bytes. The VM is named in a first message sent at once, so output
        flows before the first keystroke."""
        first = pb.ConsoleInput(vm_id=vm_id, include_history=include_history)
        return self._bidi("AttachConsole", first, input, _data, timeout)

    def stream_logs(self, vm_id: str, *, include_history: bool = False, logs: bool = True,
                    metrics: bool = True, timeout: float | None = None):
        """Stream of LogEntry (log and/or metrics records)."""
        if not (logs or metrics):
            raise SpecError("stream_logs: ask for logs, metrics or both")
        req = pb.StreamLogsRequest(vm_id=vm_id, include_history=include_history, logs=logs,
                                   metrics=metrics)
        return self._stream("StreamLogs", req, lambda e: e, timeout)

    # -- snapshots (docs/snapshots.md) ---------------------------------------------------
    def _long(self, timeout: float | None) -> float | None:
        if timeout is not None or self.timeout is None:
            return timeout
        return max(self.timeout, SNAPSHOT_TIMEOUT)

    def create_snapshot(self, vm_id: str, snapshot_id: str = "", *, pause: bool = True,
                        resume: bool = False, timeout: float | None = None):
        """Save the VM to a snapshot on its node: pause it (a RUNNING VM needs pause=True,
        the default; pause=False wants it PAUSED already, as Firecracker does), save, and
        resume it if `resume` and this call paused it. No id: the node makes one from the
        VM's. Default deadline: at least 300 s. -> Snapshot"""
        req = pb.CreateSnapshotRequest(vm_id=vm_id, snapshot_id=snapshot_id, pause=pause,
                                       resume=resume)
        return self._unary("CreateSnapshot", req, lambda r: r.snapshot, self._long(timeout))

    def list_snapshots(self, source_vm: str = "", *, timeout: float | None = None):
        """The node's snapshots (of `source_vm` only, if given). -> [Snapshot]"""
        return self._unary("ListSnapshots", pb.ListSnapshotsRequest(source_vm=source_vm),
                           lambda r: list(r.snapshots), timeout)

    def get_snapshot(self, snapshot_id: str, *, timeout: float | None = None):
        return self._unary("GetSnapshot", pb.GetSnapshotRequest(snapshot_id=snapshot_id),
                           lambda r: r.snapshot, timeout)

    def delete_snapshot(self, snapshot_id: str, *, timeout: float | None = None):
        return self._unary("DeleteSnapshot", pb.DeleteSnapshotRequest(snapshot_id=snapshot_id),
                           lambda r: None, timeout)

    def restore_vm(self, snapshot_id: str, vm_id: str, *,
                   labels: Mapping[str, str] | None = None,
                   network_overrides: Iterable | None = None, vsock_uds_path: str = "",
                   paused: bool = False, timeout: float | None = None):
        """A new VM `vm_id` from a snapshot, RUNNING (or PAUSED with paused=True; the RPC's
        own default is paused, like Firecracker's resume_vm). `network_overrides`: other
        TAPs/MACs per iface_id; `labels` default to the snapshot's. -> Vm"""
        req = pb.RestoreVmRequest(snapshot_id=snapshot_id, vm_id=vm_id,
                                  labels=as_labels(labels),
                                  network_overrides=as_network_overrides(network_overrides),
                                  vsock_uds_path=vsock_uds_path, resume_vm=not paused)
        return self._unary("RestoreVm", req, _vm, self._long(timeout))

    # -- metadata and node -------------------------------------------------------------------
    def put_metadata(self, vm_id: str, doc: Any, *, timeout: float | None = None):
        """Replace the metadata document (a dict, or JSON text). -> the new document"""
        req = pb.PutMetadataRequest(vm_id=vm_id, json=_json_text(doc, "metadata"))
        return self._unary("PutMetadata", req, _doc, timeout)

    def patch_metadata(self, vm_id: str, patch: Any, *, timeout: float | None = None):
        """Merge a JSON merge patch (RFC 7396; None deletes a key). -> the new document"""
        req = pb.PatchMetadataRequest(vm_id=vm_id, json=_json_text(patch, "patch"))
        return self._unary("PatchMetadata", req, _doc, timeout)

    def get_metadata(self, vm_id: str, *, timeout: float | None = None):
        return self._unary("GetMetadata", pb.GetMetadataRequest(vm_id=vm_id), _doc, timeout)

    def node_info(self, *, timeout: float | None = None):
        """-> NodeInfo"""
        return self._unary("GetNodeInfo", pb.GetNodeInfoRequest(), lambda r: r, timeout)

    # -- implemented by each client --------------------------------------------------------
    def _unary(self, method: str, req, post, timeout: float | None):
        raise NotImplementedError

    def _stream(self, method: str, req, post, timeout: float | None):
        raise NotImplementedError

    def _bidi(self, method: str, first, data, post, timeout: float | None):
        raise NotImplementedError
