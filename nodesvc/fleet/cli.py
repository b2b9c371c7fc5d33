"""`nodesvc-fleet controller`: run a fleet controller (several may run; one leads).

    nodesvc-fleet controller --etcd 127.0.0.1:2379,127.0.0.1:22379 --id ctl-a \
        --node-tls-ca ca.pem --node-tls-cert ctl.pem --node-tls-key ctl.key

Exit status: 0 after SIGTERM/SIGINT (leadership is resigned at once), 2 for bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Sequence

from .model import DEFAULT_PREFIX


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nodesvc-fleet", description="Fleet control plane.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("controller", help="place, start and fail over fleet VMs")
    c.add_argument("--etcd", required=True, metavar="ENDPOINTS",
                   help="comma-separated etcd client endpoints")
    c.add_argument("--id", default=None, help="this controller's name (default host:pid)")
    c.add_argument("--prefix", default=DEFAULT_PREFIX, help="etcd key prefix")
    c.add_argument("--lease-ttl", type=int, default=5, metavar="SECS",
                   help="leadership lease TTL: a dead leader is replaced after about this")
    c.add_argument("--cpu-overcommit", type=float, metavar="X",
                   help="fleet cap on vCPUs per host CPU (each node's own cap applies too)")
    c.add_argument("--inflight-per-node", type=int, default=4,
                   help="concurrent create/start calls per node (default 4)")
    t = c.add_argument_group("mutual TLS to the nodes (TCP endpoints)")
    t.add_argument("--node-tls-ca", metavar="PEM")
    t.add_argument("--node-tls-cert", metavar="PEM")
    t.add_argument("--node-tls-key", metavar="PEM")
    t.add_argument("--node-tls-server-name", metavar="NAME")
    c.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


async def _serve(ctl) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(ctl.run())
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, args.log_level.upper()),
                        format="nodesvc-fleet: %(levelname)s %(name)s: %(message)s")
    from .controller import Controller
    from .nodeconn import TlsFiles
    tls_opts = (args.node_tls_ca, args.node_tls_cert, args.node_tls_key)
    if any(tls_opts) and not all(tls_opts):
        print("nodesvc-fleet: error: --node-tls-ca, --node-tls-cert and --node-tls-key go "
              "together", file=sys.stderr)
        return 2
    tls = TlsFiles(*tls_opts, server_name=args.node_tls_server_name) if all(tls_opts) else None
    ctl = Controller([e for e in args.etcd.split(",") if e],
                     args.id or f"{socket.gethostname()}:{os.getpid()}", prefix=args.prefix,
                     ttl=args.lease_ttl, node_tls=tls, cpu_overcommit=args.cpu_overcommit,
                     inflight_per_node=args.inflight_per_node)
    asyncio.run(_serve(ctl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
