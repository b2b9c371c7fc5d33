"""nodectl: drive a nodesvc node service from the shell.

    nodectl create -f vm.yaml --start         nodectl ls -l app=web --state running
    nodectl console web-1                     (Ctrl-] detaches; the VM keeps running)
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
    c = cmd("info", "show the node's capacity, VMs by state, versions and plugins", vm=False)
    _out(c)
    c = cmd("health", "check that the node service is SERVING", vm=False)
    c.add_argument("--wait", type=float, default=0, metavar="SECS",
                   help="keep trying for up to SECS seconds")
    fleet.register(sub, COMMANDS)       # nodectl fleet ... (etcd; docs/fleet.md)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
