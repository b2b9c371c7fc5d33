"""`nodectl fleet ...`: fleet-wide VMs and nodes, through etcd (docs/fleet.md).

    nodectl fleet create -f vm.yaml --id web-1 -l app=web --anti-affinity app
    nodectl fleet ls                    nodectl fleet get web-1 -o yaml
    nodectl fleet nodes                 nodectl fleet drain n2 --wait 120
    nodectl fleet cordon n3             nodectl fleet uncordon n3
    nodectl fleet rm web-1              nodectl fleet watch -n 10

Where: --etcd ENDPOINTS, else $NODESVC_FLEET_ETCD, else 127.0.0.1:2379. Errors print one
line `nodectl: fleet: <message>` and exit 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from . import format as fmt
from .errors import SpecError
from .spec import _resolve_paths, create_request_from_dict, load_file

ENV_ETCD = "NODESVC_FLEET_ETCD"


def register(sub, commands: dict) -> None:
    """Add `fleet` to nodectl's subcommands (and its runner to nodectl's table)."""
    p = sub.add_parser("fleet", help="fleet-wide VMs and nodes (etcd)",
                       description="Fleet-wide VMs and nodes, through etcd.")
    p.add_argument("--etcd", metavar="ENDPOINTS", default=os.environ.get(ENV_ETCD,
                                                                         "127.0.0.1:2379"),
                   help=f"comma-separated etcd endpoints (default ${ENV_ETCD} or "
                        "127.0.0.1:2379)")
    p.add_argument("--prefix", default=None, help="etcd key prefix")
    fs = p.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")

    def out(c, choices=("table", "json", "yaml")):
        c.add_argument("-o", "--output", choices=choices, default=choices[0])
    c = fs.add_parser("create", help="add a VM to the fleet (the controller places it)")
    c.add_argument("-f", "--file", required=True,
                   help="a VmSpec, or {vm_id, labels, spec, placement}; '-': stdin")
    c.add_argument("--id", dest="vm_id", help="VM id (overrides the file's vm_id)")
    c.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VAL")
    c.add_argument("--selector", action="append", default=[], metavar="KEY=VAL",
                   help="node label the VM's node must have (repeatable)")
    c.add_argument("--anti-affinity", action="append", default=[], metavar="KEY",
                   help="VM label key: no two VMs with the same value on one node")
    c.add_argument("--spread-by", default="", metavar="NODE-LABEL",
                   help="spread over the values of this node label (default: over nodes)")
    c.add_argument("--spread-match", action="append", default=[], metavar="KEY",
                   help="VM label keys that make up the spread group")
    out(c)
    out(fs.add_parser("ls", help="list fleet VMs with their node and state"))
    c = fs.add_parser("get", help="one fleet VM: desired, assignment, status")
    c.add_argument("vm_id", metavar="ID")
    out(c, ("yaml", "json"))
    c = fs.add_parser("rm", help="remove a VM from the fleet (its node stops it)")
    c.add_argument("vm_id", metavar="ID")
    out(fs.add_parser("nodes", help="registered and configured nodes"))
    for name, help in (("cordon", "take no new VMs"), ("uncordon", "take VMs again"),
                       ("drain", "cordon and move every VM off the node")):
        c = fs.add_parser(name, help=help)
        c.add_argument("node", metavar="NODE")
        if name == "drain":
            c.add_argument("--wait", type=float, default=0, metavar="SECS",
                           help="wait up to SECS until no VM is assigned to the node")
    c = fs.add_parser("watch", help="follow fleet changes (desired, placement, status, nodes)")
    c.add_argument("-n", "--count", type=int, metavar="N", help="exit after N events")
    commands["fleet"] = run


def run(args) -> int:
    from nodesvc.fleet.etcd import EtcdError
    from nodesvc.fleet.ops import FleetError
    try:
        return asyncio.run(_run(args))
    except (FleetError, EtcdError, SpecError, ValueError) as e:
        print(f"nodectl: fleet: {e}", file=sys.stderr)
        return 1


def _kv(items: list[str], what: str) -> dict:
    out = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise SpecError(f"{what}: want KEY=VALUE, got {item!r}")
        out[k] = v
    return out


async def _run(args) -> int:
    from nodesvc.fleet.model import DEFAULT_PREFIX
    from nodesvc.fleet.ops import Fleet
    async with Fleet([e for e in args.etcd.split(",") if e],
                     args.prefix or DEFAULT_PREFIX) as f:
        return await globals()["_" + args.fleet_command](f, args) or 0


def _print(text: str) -> None:
    print(text, flush=True)


async def _create(f, args):
    doc = load_file(args.file)
    placement = {}
    if isinstance(doc, dict):
        doc = dict(doc)
        placement = doc.pop("placement", None) or {}
    req = create_request_from_dict(doc)
    _resolve_paths(req, os.path.dirname(os.path.abspath(args.file))
                   if args.file != "-" else os.getcwd())
    vm_id = args.vm_id or req.vm_id
    if not vm_id:
        raise SpecError("no VM id: give --id ID or vm_id in the file")
    placement = dict(placement)
    if args.selector:
        placement["node_selector"] = {**placement.get("node_selector", {}),
                                      **_kv(args.selector, "--selector")}
    for key, flag in (("anti_affinity", args.anti_affinity),
                      ("spread_match", args.spread_match)):
        if flag:
            placement[key] = [*placement.get(key, []), *flag]
    if args.spread_by:
        placement["spread_by"] = args.spread_by
    d = await f.create(vm_id, req.spec, {**req.labels, **_kv(args.label, "--label")},
                       placement)
    _print(f"{d.id}: created" if args.output == "table" else fmt.dump(d.__dict__, args.output))


def _row(v) -> list[str]:
    reason = v.status.reason if v.status else ""
    return [v.id, v.node or "-", v.state, fmt.labels_text(v.desired.labels) or "-",
            reason[:60]]


def _view(v) -> dict:
    return {"id": v.id, "desired": v.desired.__dict__,
            "assignment": v.assignment.__dict__ if v.assignment else None,
            "status": v.status.__dict__ if v.status else None}


async def _ls(f, args):
    vs = await f.ls()
    if args.output == "table":
        _print(fmt.table(["ID", "NODE", "STATE", "LABELS", "REASON"], [_row(v) for v in vs]))
    else:
        _print(fmt.dump([_view(v) for v in vs], args.output))


async def _get(f, args):
    _print(fmt.dump(_view(await f.get(args.vm_id)), args.output))


async def _rm(f, args):
    await f.rm(args.vm_id)
    _print(f"{args.vm_id}: removed (its node stops it)")


async def _nodes(f, args):
    ns = await f.nodes()
    if args.output != "table":
        return _print(fmt.dump([{"name": n.name, "record": n.record and n.record.__dict__,
                                 "conf": n.conf.__dict__, "vms": n.vms} for n in ns],
                               args.output))
    rows = []
    for n in ns:
        r = n.record
        status = ("draining" if n.conf.draining else "cordoned" if n.conf.cordoned
                  else "ready") if r else "down"
        rows.append([n.name, status, r.endpoint if r else "-", str(n.vms),
                     f"{r.memory_mib}" if r else "-", f"{r.cpus}x{r.cpu_overcommit:g}" if r
                     else "-", fmt.labels_text(r.labels) if r and r.labels else "-"])
    _print(fmt.table(["NODE", "STATUS", "ENDPOINT", "VMS", "MEM_MIB", "CPUS", "LABELS"], rows))


async def _cordon(f, args):
    await f.set_node(args.node, cordoned=True)
    _print(f"{args.node}: cordoned")


async def _uncordon(f, args):
    await f.set_node(args.node, cordoned=False, draining=False)
    _print(f"{args.node}: schedulable")


async def _drain(f, args):
    await f.set_node(args.node, cordoned=True, draining=True)
    deadline = time.monotonic() + args.wait
    while args.wait:
        left = [n for n in await f.nodes() if n.name == args.node and n.vms]
        if not left:
            break
        if time.monotonic() > deadline:
            print(f"nodectl: fleet: {args.node} still has {left[0].vms} VMs after "
                  f"{args.wait:g}s", file=sys.stderr)
            return 1
        await asyncio.sleep(0.5)
    _print(f"{args.node}: draining" + (" done" if args.wait else ""))


async def _watch(f, args):
    n = 0
    def started(rev):
        print(f"# watching {f.keys.prefix} after revision {rev}", file=sys.stderr, flush=True)
    async for kind, name, op, value in f.watch(started):
        detail = ""
        if op == "put" and value:
            try:
                d = json.loads(value)
                detail = " ".join(f"{k}={d[k]}" for k in ("node", "state", "phase", "reason")
                                  if isinstance(d, dict) and d.get(k))
            except ValueError:
                detail = value.decode(errors="replace")
        _print(f"{time.strftime('%H:%M:%S')} {kind:<8} {op:<6} {name or '-'} {detail}".rstrip())
        n += 1
        if args.count and n >= args.count:
            return 0
