"""nodectl: drive a nodesvc node service from the shell.

    nodectl create -f vm.yaml --start         nodectl ls -l app=web --state running
    nodectl console web-1                     (Ctrl-] detaches; the VM keeps running)
    nodectl snapshot web-1 --id warm --resume  nodectl restore warm --id web-2 --tap tap2
    nodectl snapshots                         nodectl snapshot rm warm
    nodectl --target node7:7443 --tls-ca ca.pem --tls-cert me.pem --tls-key me.key info

Where: --socket PATH or --target HOST:PORT (or unix:///path); else $NODESVC_TARGET, else
$NODESVC_SOCKET, else /var/lib/nodesvc/nodesvc.sock. Exit status: 0 ok; 1 an error,
reported as one line `nodectl: <CODE>: <message>` (CODE a gRPC status code name);
2 bad usage; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import fleet
from .commands import COMMANDS
from .console import DEFAULT_ESCAPE
from .errors import NodeError

PROG = "nodectl"


def _common(p: argparse.ArgumentParser, top: bool) -> None:
    # On the top parser with defaults; repeated on every subcommand (so `nodectl ls
    # --socket S` works too) with SUPPRESS, which leaves the top parser's values alone.
    def d(v):
        return v if top else argparse.SUPPRESS
    where = p.add_argument_group("connection")
    m = where.add_mutually_exclusive_group()
    m.add_argument("--socket", metavar="PATH", default=d(None), help="node service Unix socket")
    m.add_argument("--target", metavar="HOST:PORT", default=d(None),
                   help="TCP address (or unix:///path)")
    where.add_argument("--tls-ca", metavar="PEM", default=d(None),
                       help="CA that signed the server certificate")
    where.add_argument("--tls-cert", metavar="PEM", default=d(None),
                       help="client certificate (mutual TLS)")
    where.add_argument("--tls-key", metavar="PEM", default=d(None), help="client private key")
    where.add_argument("--tls-server-name", metavar="NAME", default=d(None),
                       help="name to expect in the server certificate")
    where.add_argument("--insecure", action="store_true", default=d(False),
                       help="plaintext TCP (only for a server run with --insecure-tcp)")
    where.add_argument("--timeout", type=float, default=d(60.0), metavar="SECS",
                       help="deadline of each request (default 60)")


def _out(p, choices=("table", "json", "yaml"), default="table"):
    p.add_argument("-o", "--output", choices=choices, default=default,
                   help=f"output format (default {default})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Control the microVMs of a node.",
                                epilog="Exit status: 0 ok, 1 error, 2 usage, 130 interrupted.")
    _common(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name, help, vm=True):
        c = sub.add_parser(name, help=help, description=help)
        _common(c, top=False)
        if vm:
            c.add_argument("vm_id", metavar="ID")
        return c

    c = cmd("create", "create a VM from a YAML/JSON spec file", vm=False)
    c.add_argument("-f", "--file", required=True,
                   help="a VmSpec, or a CreateVmRequest (vm_id, labels, spec); '-': stdin")
    c.add_argument("--id", dest="vm_id", help="VM id (overrides the file's vm_id)")
    c.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VAL")
    c.add_argument("--start", action="store_true", help="start it right away")
    _out(c)
    cmd("start", "start a VM (boot its guest)")
    c = cmd("stop", "stop a VM: Ctrl-Alt-Del, then force after the grace period")
    c.add_argument("--force", action="store_true", help="skip Ctrl-Alt-Del, stop at once")
    c.add_argument("--grace", type=float, metavar="SECS",
                   help="time the guest gets to shut down (server default 10)")
    cmd("pause", "pause a running VM's vCPUs")
    cmd("resume", "resume a paused VM")
    c = cmd("rm", "delete a VM that is not running")
    c.add_argument("-f", "--force", action="store_true", help="stop it by force first")
    c = cmd("ls", "list VMs", vm=False)
    c.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VAL")
    c.add_argument("--state", action="append", default=[], metavar="STATE",
                   help="created, running, paused, stopped, failed, ... (repeatable)")
    _out(c)
    c = cmd("get", "show one VM")
    _out(c)
    c = cmd("watch", "follow VM events", vm=False)
    c.add_argument("--since", type=int, metavar="REV", help="replay the events after REV")
    c.add_argument("--id", dest="vm_id", default="", help="only this VM")
    c.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VAL")
    c.add_argument("-n", "--count", type=int, metavar="N", help="exit after N events")
    _out(c, ("line", "json"), "line")
    c = cmd("logs", "show a VM's VMM log (and metrics) records")
    c.add_argument("-f", "--follow", action="store_true", help="keep following")
    c.add_argument("--metrics", action="store_true", help="include metrics records")
    c.add_argument("--no-history", action="store_true", help="skip the retained records")
    _out(c, ("line", "json"), "line")
    c = sub.add_parser("metadata", help="put, patch or get a VM's metadata document")
    _common(c, top=False)
    c.add_argument("action", choices=["put", "patch", "get"])
    c.add_argument("vm_id", metavar="ID")
    c.add_argument("json", nargs="?", help="the document or patch, as JSON text")
    c.add_argument("-f", "--file", help="read the document or patch from a JSON/YAML file")
    c = cmd("console", "attach to a VM's serial console (Ctrl-] detaches)")
    c.add_argument("--read-only", action="store_true",
                   help="only print the output (StreamConsole) until the VM ends")
    c.add_argument("--no-history", action="store_true", help="skip the retained output")
    c.add_argument("--escape", default=DEFAULT_ESCAPE, metavar="KEY",
                   help=f"detach key in caret notation (default {DEFAULT_ESCAPE}, Ctrl-])")
    c = cmd("snapshot", "snapshot a VM: pause, save, stay paused (--resume: run on); "
                        "`snapshot rm SNAPSHOT...` deletes snapshots", vm=False)
    c.add_argument("target", nargs="+", metavar="VM | rm SNAPSHOT",
                   help="the VM to snapshot, or `rm` and the snapshots to delete")
    c.add_argument("--id", dest="snapshot_id", metavar="SNAPSHOT",
                   help="snapshot id (default: <vm>-<UTC date-time>)")
    c.add_argument("--resume", action="store_true", help="resume the VM after the save")
    _out(c)
    c = cmd("snapshots", "list the node's snapshots with their size and source VM", vm=False)
    c.add_argument("--vm", metavar="ID", help="only snapshots of this VM")
    _out(c)
    c = cmd("restore", "restore a snapshot as a new VM (running, or --paused)", vm=False)
    c.add_argument("snapshot_id", metavar="SNAPSHOT")
    c.add_argument("--id", dest="vm_id", required=True, metavar="NEW",
                   help="id of the new VM")
    c.add_argument("--tap", action="append", default=[], metavar="[IFACE=]TAP",
                   help="another TAP for an interface (repeatable; IFACE may be left out "
                        "if there is one)")
    c.add_argument("--mac", action="append", default=[], metavar="[IFACE=]MAC",
                   help="another guest MAC for an interface (repeatable)")
    c.add_argument("--vsock", metavar="PATH", help="another host socket for the vsock device")
    c.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VAL",
                   help="labels of the new VM (default: the snapshot's)")
    c.add_argument("--paused", action="store_true", help="leave it paused")
    _out(c)
    c = cmd("info", "show the node's capacity, VMs by state, versions and plugins", vm=False)
    _out(c)
    c = cmd("health", "check that the node service is SERVING", vm=False)
    c.add_argument("--wait", type=float, default=0, metavar="SECS",
                   help="keep trying for up to SECS seconds")
    fleet.register(sub, COMMANDS)       # nodectl fleet ... (etcd; docs/fleet.md)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # Snapshot and restore take longer than the default deadline unless one was asked for.
    args.timeout_given = any(a == "--timeout" or a.startswith("--timeout=") for a in argv)
    try:
        return COMMANDS[args.command](args) or 0
    except NodeError as e:
        print(f"{PROG}: {e.code.name}: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:     # `nodectl watch | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
