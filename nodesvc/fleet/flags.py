"""`nodesvc serve` fleet flags, in a module that imports nothing heavy: a node service run
without --fleet-etcd never loads the etcd client."""

from __future__ import annotations

from .model import DEFAULT_PREFIX


def add_arguments(parser) -> None:
    """`nodesvc serve` flags (kept here so the server's parser only calls this)."""
    g = parser.add_argument_group("fleet (docs/fleet.md)")
    g.add_argument("--fleet-etcd", metavar="ENDPOINTS",
                   help="comma-separated etcd client endpoints: register this node there")
    g.add_argument("--node-name", help="name in the fleet (default: the host name)")
    g.add_argument("--advertise", metavar="ADDR",
                   help="gRPC target controllers use to reach this node (host:port for mTLS, "
                        "or unix:///path; default: this node's Unix socket)")
    g.add_argument("--fleet-label", action="append", default=[], metavar="KEY=VAL",
                   help="node label for placement (repeatable)")
    g.add_argument("--fleet-lease-ttl", type=int, default=10, metavar="SECS",
                   help="node lease TTL (default 10): failover takes about this long")
    g.add_argument("--fleet-prefix", default=DEFAULT_PREFIX, help="etcd key prefix")
