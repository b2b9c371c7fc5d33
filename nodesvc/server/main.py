"""`nodesvc serve`: run the node service.

    nodesvc serve --state-dir /var/lib/nodesvc                      # Unix socket only
    nodesvc serve --listen 0.0.0.0:7443 --tls-cert c.pem --tls-key k.pem --tls-client-ca ca.pem
    nodesvc serve --trace-exporter otlp --otlp-endpoint http://localhost:4317   # OpenTelemetry

Exit status: 0 after a graceful shutdown (SIGTERM/SIGINT), 2 for bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Sequence

DEFAULT_STATE_DIR = "/var/lib/nodesvc"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nodesvc", description="Per-host microVM node service.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the gRPC node service")
    s.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                   help="VM records, run dirs and the default socket "
                        f"(default {DEFAULT_STATE_DIR})")
    s.add_argument("--socket", help="Unix socket path (default <state-dir>/nodesvc.sock)")
    s.add_argument("--listen", metavar="HOST:PORT", help="also serve TCP (mutual TLS)")
    s.add_argument("--tls-cert", help="server certificate (PEM) for --listen")
    s.add_argument("--tls-key", help="server private key (PEM) for --listen")
    s.add_argument("--tls-client-ca", help="CA (PEM) that client certificates must chain to")
    s.add_argument("--insecure-tcp", action="store_true",
                   help="allow --listen without TLS (plaintext; for trusted networks only)")
    s.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)")
    c = s.add_argument_group("capacity")
    c.add_argument("--memory-mib", type=int, help="host memory to plan with (default MemTotal)")
    c.add_argument("--reserve-mib", type=int, default=256,
                   help="memory kept for the host (default 256)")
    c.add_argument("--cpu-overcommit", type=float, default=4.0,
                   help="vCPUs allowed per host CPU (default 4)")
    v = s.add_argument_group("VMM processes")
    v.add_argument("--vmm-metrics-interval", type=float, default=10.0,
                   help="seconds between VMM metrics records (default 10)")
    v.add_argument("--vmm-log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    v.add_argument("--default-grace", type=float, default=10.0,
                   help="StopVm's default Ctrl-Alt-Del grace period in seconds (default 10)")
    s.add_argument("--event-history", type=int, default=1000,
                   help="VM events kept for WatchVms resumption (default 1000)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    j = s.add_argument_group("jail (every VMM runs jailed unless --no-jail)")
    j.add_argument("--jail-base", metavar="DIR",
                   help="per-VM jail dirs (default: <state-dir>/jail)")
    j.add_argument("--uid-range", metavar="FIRST-LAST", default="900000-999999",
                   help="unprivileged uids/gids handed to VMMs, one per live VM")
    j.add_argument("--jail-mode", choices=["zygote", "exec"], default="zygote",
                   help="zygote: VMMs forked from one pre-imported process (fast start, "
                        "small; one ASLR layout shared by all); exec: a fresh jailed "
                        "interpreter per VM (own ASLR layout; slower start, more memory). "
                        "See docs/security.md")
    j.add_argument("--no-jail", action="store_true",
                   help="DEVELOPMENT ONLY: run VMMs as root in the host's namespaces, "
                        "without seccomp")
    t = s.add_argument_group("tracing (OpenTelemetry; OTEL_* environment variables apply)")
    t.add_argument("--trace-exporter", choices=["none", "console", "otlp"],
                   help="where spans go (default: OTEL_TRACES_EXPORTER, else none)")
    t.add_argument("--otlp-endpoint", metavar="URL",
                   help="OTLP/gRPC collector, e.g. http://localhost:4317 (implies otlp; "
                        "default: OTEL_EXPORTER_OTLP_ENDPOINT)")
    from ..fleet.flags import add_arguments as fleet_arguments
    fleet_arguments(s)      # --fleet-etcd, --node-name, --advertise (docs/fleet.md)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, args.log_level.upper()),
                        format="nodesvc: %(levelname)s %(name)s: %(message)s")
    from .. import tracing
    from ..core import NodeConfig
    from ..core.capacity import Capacity
    from .app import ServeOptions, UsageError, serve
    try:
        tracer = tracing.setup(args.trace_exporter, args.otlp_endpoint, set_global=True)
    except tracing.TracingError as e:
        print(f"nodesvc: error: {e}", file=sys.stderr)
        return 2
    from ..core.launcher import JailConfig
    try:
        first, last = (int(x) for x in args.uid_range.split("-"))
    except ValueError:
        print(f"nodesvc: error: --uid-range: expected FIRST-LAST, got {args.uid_range!r}",
              file=sys.stderr)
        return 2
    jail = JailConfig(args.jail_base or os.path.join(args.state_dir, "jail"), (first, last))
    cfg = NodeConfig(
        state_dir=args.state_dir, jail=jail, no_jail=args.no_jail, jail_mode=args.jail_mode,
        capacity=Capacity.detect(memory_mib=args.memory_mib, reserve_mib=args.reserve_mib,
                                 cpu_overcommit=args.cpu_overcommit),
        event_history=args.event_history, default_grace_s=args.default_grace,
        vmm_metrics_interval_s=args.vmm_metrics_interval, vmm_log_level=args.vmm_log_level,
        tracing=tracer)
    opts = ServeOptions(socket=args.socket, listen=args.listen, tls_cert=args.tls_cert,
                        tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                        insecure_tcp=args.insecure_tcp, metrics_listen=args.metrics_listen)
    run = serve(cfg, opts)
    if args.fleet_etcd:     # registration beside the server; etcd trouble never stops it
        from ..fleet.agent import run_with
        run.close()
        run = run_with(serve, cfg, opts, args)
    try:
        asyncio.run(run)
    except UsageError as e:
        print(f"nodesvc: error: {e}", file=sys.stderr)
        return 2
    finally:
        if tracer is not None:
            tracer.shutdown()   # export what is still batched
    return 0


if __name__ == "__main__":
    sys.exit(main())
