"""nodectl's subcommands: each takes the parsed arguments, talks to the node through a
NodeClient, prints, and returns the exit status (errors propagate as NodeError)."""

from __future__ import annotations

import json
import os
import sys

import grpc

from nodesvc.api.v1 import nodesvc_pb2 as pb

from . import console as con
from . import format as fmt
from .client import NodeClient
from .connect import Tls
from .errors import NodeError, SpecError
from .spec import create_request_from_file, load_file

ACTIVE = (pb.VM_STATE_STARTING, pb.VM_STATE_RUNNING, pb.VM_STATE_PAUSED,
          pb.VM_STATE_STOPPING)
LOGS_NO_FOLLOW_S = 1.0      # without -f: the retained records arrive well within this


def connect(args) -> NodeClient:
    tls_opts = (args.tls_ca, args.tls_cert, args.tls_key)
    tls = None
    if any(tls_opts):
        if not all(tls_opts):
            raise SpecError("--tls-ca, --tls-cert and --tls-key go together (mutual TLS)")
        tls = Tls(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key,
                  server_name=args.tls_server_name)
    target = "unix://" + os.path.abspath(args.socket) if args.socket else args.target
    return NodeClient(target, tls=tls, insecure=args.insecure, timeout=args.timeout)


def parse_labels(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SpecError(f"--label: want KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _print(text: str) -> None:
    print(text, flush=True)


def _show_vm(vm: pb.Vm, output: str) -> None:
    _print(fmt.vm_table([vm]) if output == "table" else fmt.dump(vm, output))


def _status(vm: pb.Vm) -> None:
    reason = f" ({vm.reason})" if vm.reason else ""
    _print(f"{vm.id}: {fmt.state_name(vm.state)}{reason}")


def create(args) -> int:
    req = create_request_from_file(args.file)
    req.vm_id = args.vm_id or req.vm_id
    if not req.vm_id:
        raise SpecError("no VM id: give --id ID or vm_id in the spec file")
    labels = {**req.labels, **parse_labels(args.label)}
    with connect(args) as node:
        vm = node.create_vm(req.vm_id, req.spec, labels=labels, start=args.start or req.start)
        _show_vm(vm, args.output)


def _lifecycle(method: str):
    def run(args) -> int:
        with connect(args) as node:
            _status(getattr(node, method)(args.vm_id))
    return run


def stop(args) -> int:
    with connect(args) as node:
        # The deadline must outlast the grace period, or force would never come.
        timeout = max(args.timeout, (args.grace or 10) + 30)
        _status(node.stop_vm(args.vm_id, grace=args.grace, force=args.force, timeout=timeout))


def rm(args) -> int:
    with connect(args) as node:
        if args.force and node.get_vm(args.vm_id).state in ACTIVE:
            node.stop_vm(args.vm_id, force=True)
        node.delete_vm(args.vm_id)
        _print(f"{args.vm_id}: deleted")


def ls(args) -> int:
    with connect(args) as node:
        vms = node.list_vms(parse_labels(args.label), args.state or None)
    if args.output == "table":
        _print(fmt.vm_table(vms))
    else:
        _print(fmt.dump({"revision": vms.revision, "vms": [fmt.to_dict(v) for v in vms]},
                        args.output))


def get(args) -> int:
    with connect(args) as node:
        _show_vm(node.get_vm(args.vm_id), args.output)


def watch(args) -> int:
    with connect(args) as node, node.watch_vms(args.since, labels=parse_labels(args.label),
                                               vm_id=args.vm_id) as events:
        for n, ev in enumerate(events, 1):
            _print(fmt.event_line(ev) if args.output == "line"
                   else json.dumps(fmt.to_dict(ev), separators=(",", ":")))
            if args.count and n >= args.count:
                break


def logs(args) -> int:
    with connect(args) as node:
        stream = node.stream_logs(args.vm_id, include_history=not args.no_history,
                                  metrics=args.metrics,
                                  timeout=None if args.follow else LOGS_NO_FOLLOW_S)
        seen = 0
        try:
            with stream:
                for entry in stream:
                    if stream.dropped > seen:
                        print(f"nodectl: {stream.dropped - seen} records dropped (slow reader)",
                              file=sys.stderr)
                        seen = stream.dropped
                    line = (fmt.log_line(entry) if args.output == "line"
                            else json.dumps(fmt.to_dict(entry), separators=(",", ":")))
                    if line:
                        _print(line)
        except NodeError as e:
            if args.follow or e.code != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise   # without -f the deadline is how a live VM's records end


def metadata(args) -> int:
    if args.action == "get":
        if args.json or args.file:
            raise SpecError("metadata get takes no document")
        doc = None
    elif args.file and args.json:
        raise SpecError("give the document as JSON text or with -f FILE, not both")
    elif args.file:
        doc = load_file(args.file)
    elif args.json is not None:
        try:
            doc = json.loads(args.json)
        except ValueError as e:
            raise SpecError(f"document: invalid JSON: {e}") from None
    else:
        raise SpecError(f"metadata {args.action} needs a document: JSON text or -f FILE")
    with connect(args) as node:
        if args.action == "get":
            result = node.get_metadata(args.vm_id)
        else:
            result = getattr(node, f"{args.action}_metadata")(args.vm_id, doc)
    _print(json.dumps(result, indent=2, sort_keys=True))


def console(args) -> int:
    escape = con.parse_escape(args.escape)
    with connect(args) as node:
        if args.read_only:
            con.follow(node, args.vm_id, include_history=not args.no_history)
            detached = False
        else:
            detached = con.attach(node, args.vm_id, escape=escape,
                                  include_history=not args.no_history)
        vm = node.get_vm(args.vm_id)
    what = "detached from" if detached else "console closed:"
    reason = f" ({vm.reason})" if vm.reason else ""
    print(f"nodectl: {what} VM {vm.id} is {fmt.state_name(vm.state)}{reason}",
          file=sys.stderr)


# -- snapshots --------------------------------------------------------------------------
def snapshot(args) -> int:
    """`snapshot VM` saves one; `snapshot rm SNAP...` deletes snapshots."""
    if args.target[0] == "rm" and len(args.target) > 1:
        if args.resume or args.snapshot_id:
            raise SpecError("snapshot rm takes only snapshot ids")
        with connect(args) as node:
            for sid in args.target[1:]:
                node.delete_snapshot(sid)
                _print(f"{sid}: deleted")
        return 0
    if len(args.target) != 1:
        raise SpecError("snapshot: give one VM id (or `snapshot rm SNAPSHOT...`)")
    vm_id = args.target[0]
    with connect(args) as node:
        snap = node.create_snapshot(vm_id, args.snapshot_id or "", resume=args.resume,
                                    timeout=args.timeout if args.timeout_given else None)
        state = fmt.state_name(node.get_vm(vm_id).state)
    if args.output != "table":
        _print(fmt.dump(snap, args.output))
        return 0
    _print(fmt.snapshot_table([snap]))
    print(f"nodectl: VM {vm_id} is {state}" +
          ("" if args.resume else " (nodectl resume it, or snapshot with --resume)"),
          file=sys.stderr)


def snapshots(args) -> int:
    with connect(args) as node:
        snaps = node.list_snapshots(args.vm or "")
    if args.output == "table":
        _print(fmt.snapshot_table(snaps))
    else:
        _print(fmt.dump({"snapshots": [fmt.to_dict(s) for s in snaps]}, args.output))


def _overrides(node, snapshot_id: str, taps: list[str], macs: list[str]) -> list[pb.NetworkOverride]:
    """--tap [IFACE=]TAP and --mac [IFACE=]MAC; IFACE may be left out when the snapshot's
    VM has exactly one interface."""
    ifaces: list[str] | None = None
    out: dict[str, pb.NetworkOverride] = {}
    for flag, field, items in (("--tap", "host_dev_name", taps), ("--mac", "guest_mac", macs)):
        for item in items:
            iface, eq, value = item.rpartition("=")
            if not eq:
                if ifaces is None:
                    ifaces = [i.iface_id for i in
                              node.get_snapshot(snapshot_id).spec.network_interfaces]
                if len(ifaces) != 1:
                    raise SpecError(f"{flag} {item}: say which interface, IFACE={value} "
                                    f"(the snapshot has {', '.join(ifaces) or 'none'})")
                iface = ifaces[0]
            if not iface or not value:
                raise SpecError(f"{flag}: want [IFACE=]VALUE, got {item!r}")
            setattr(out.setdefault(iface, pb.NetworkOverride(iface_id=iface)), field, value)
    return list(out.values())


def restore(args) -> int:
    with connect(args) as node:
        vm = node.restore_vm(args.snapshot_id, args.vm_id, labels=parse_labels(args.label),
                             network_overrides=_overrides(node, args.snapshot_id, args.tap,
                                                          args.mac),
                             vsock_uds_path=args.vsock or "", paused=args.paused,
                             timeout=args.timeout if args.timeout_given else None)
        _show_vm(vm, args.output)


def info(args) -> int:
    with connect(args) as node:
        ni = node.node_info()
    _print(fmt.node_info_text(ni) if args.output == "table" else fmt.dump(ni, args.output))


def health(args) -> int:
    with connect(args) as node:
        if args.wait:
            node.wait_ready(args.wait)
            status = "SERVING"
        else:
            status = node.health()
    if status != "SERVING":
        raise NodeError(grpc.StatusCode.UNAVAILABLE, f"node service is {status}")
    _print(status)


COMMANDS = {"create": create, "start": _lifecycle("start_vm"), "stop": stop,
            "pause": _lifecycle("pause_vm"), "resume": _lifecycle("resume_vm"), "rm": rm,
            "ls": ls, "get": get, "watch": watch, "logs": logs, "metadata": metadata,
            "console": console, "info": info, "health": health, "snapshot": snapshot,
            "snapshots": snapshots, "restore": restore}
