"""`nodesvc-jailer`: Firecracker's jailer flags, then `-- <command>` exec'd inside the jail.

    nodesvc-jailer --id vm1 --uid 900001 --gid 900001 --chroot-base-dir /srv/nodesvc/jail \\
        --netns /var/run/netns/vm1 --cgroup-version 1 --parent-cgroup nodesvc \\
        --memory-mib 300 --cpus 1 --pids 16 --cgroup cpuset.cpus=0 \\
        --resource-limit no-file=2048 --resource-limit fsize=1073741824 \\
        --new-pid-ns --ro-bind /usr --ro-bind /lib -- /usr/bin/python3 -m ...

Unlike Firecracker (a static binary copied into the root), a command here needs its files
inside the jail: `--ro-bind PATH` shows a host path read-only at the same place. The
command runs without seccomp from us (a filter forbids execve); the VMM loads its own
per-thread filters. Cleanup (`--cleanup ID`, `--sweep`) is for the node after the fact.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import cgroup as cg
from .cleanup import cleanup, sweep
from .jail import DEFAULT_BASE, Jail, JailError

RESOURCE_LIMITS = {"no-file": "nofile", "fsize": "fsize"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nodesvc-jailer", description="Run a command jailed.")
    p.add_argument("--id", help="VM id: 1-64 letters, digits, '-'")
    p.add_argument("--uid", type=int, help="unprivileged uid (default: allocated)")
    p.add_argument("--gid", type=int, help="unprivileged gid (default: the uid)")
    p.add_argument("--uid-state-dir", default="/var/lib/nodesvc/uids",
                   help="lock files of allocated uids")
    p.add_argument("--uid-range", default="900000-999999")
    p.add_argument("--chroot-base-dir", default=DEFAULT_BASE)
    p.add_argument("--netns", help="network namespace: a name or a path")
    p.add_argument("--cgroup", action="append", default=[], metavar="FILE=VALUE",
                   help="a cgroup property, e.g. cpuset.cpus=0-1 (repeatable)")
    p.add_argument("--cgroup-version", type=int, choices=[1, 2],
                   help="default: detected from /proc/mounts")
    p.add_argument("--parent-cgroup", default="nodesvc")
    p.add_argument("--memory-mib", type=int, help="memory limit (guest + VMM allowance)")
    p.add_argument("--cpus", type=float, help="CPU bandwidth limit in CPUs")
    p.add_argument("--pids", type=int, help="limit on processes+threads")
    p.add_argument("--resource-limit", action="append", default=[], metavar="NAME=VALUE",
                   help="no-file=N or fsize=BYTES (repeatable)")
    p.add_argument("--new-pid-ns", action="store_true",
                   help="run the command as pid 1 of a new PID namespace")
    p.add_argument("--ro-bind", action="append", default=[], metavar="PATH",
                   help="host path visible read-only inside the jail (repeatable)")
    p.add_argument("--keep-fd", action="append", type=int, default=[],
                   help="inherited fd to keep open across the jail (repeatable)")
    p.add_argument("--new-netns", action="store_true",
                   help="a new, empty network namespace (instead of --netns)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="set in the command's otherwise empty environment (repeatable)")
    p.add_argument("--pid-fd", type=int,
                   help="write the command's pid (in our pid namespace) here, then close it")
    p.add_argument("--cleanup", metavar="ID", help="remove the jail of ID and exit")
    p.add_argument("--sweep", action="store_true",
                   help="remove the jails whose cgroup holds no process, and exit")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- command [args...]")
    return p


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise JailError(f"{what} {item!r}: expected NAME=VALUE")
        out[k] = v
    return out


def jail_from_args(a: argparse.Namespace) -> Jail:
    first, _, last = a.uid_range.partition("-")
    raw = _pairs(a.cgroup, "--cgroup")
    rl = _pairs(a.resource_limit, "--resource-limit")
    unknown = set(rl) - set(RESOURCE_LIMITS)
    if unknown:
        raise JailError(f"unknown --resource-limit {', '.join(sorted(unknown))} "
                        f"(one of {', '.join(RESOURCE_LIMITS)})")
    kw = {RESOURCE_LIMITS[k]: int(v) for k, v in rl.items()}
    for fd in a.keep_fd:
        os.set_inheritable(fd, True)
    keep = tuple(a.keep_fd) + ((a.pid_fd,) if a.pid_fd is not None else ())
    return Jail(a.id, base_dir=a.chroot_base_dir, uid=a.uid, gid=a.gid,
                uid_state_dir=a.uid_state_dir, uid_range=(int(first), int(last or first)),
                netns=a.netns, new_netns=a.new_netns, cgroup_version=a.cgroup_version, parent_cgroup=a.parent_cgroup,
                limits=cg.Limits(memory_bytes=a.memory_mib << 20 if a.memory_mib else None,
                                 cpus=a.cpus, pids=a.pids, raw=raw),
                new_pid_ns=a.new_pid_ns, pid_ns_parent="relay", keep_fds=keep,
                ro_binds=tuple(a.ro_bind), seccomp=False, import_guard=False, **kw)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        if a.cleanup:
            left = cleanup(a.cleanup, a.chroot_base_dir, uid_state_dir=a.uid_state_dir,
                           parent_cgroup=a.parent_cgroup, cgroup_version=a.cgroup_version)
            print(json.dumps({"cleaned": a.cleanup, "left": left}))
            return 1 if left else 0
        if a.sweep:
            print(json.dumps({"cleaned": sweep(a.chroot_base_dir, uid_state_dir=a.uid_state_dir,
                                               parent_cgroup=a.parent_cgroup)}))
            return 0
        cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
        if not a.id or not cmd:
            build_parser().error("--id and -- <command> are required")
        env = {**_pairs(a.env, "--env"), "PATH": "/usr/bin:/bin"}
        if a.new_netns and a.netns:
            raise JailError("--new-netns and --netns exclude each other")
        jail = jail_from_args(a)
        jail.enter()
        host_pid = jail.host_pid or os.getpid()
        if a.pid_fd is not None:
            os.write(a.pid_fd, f"{host_pid}\n".encode())
            os.close(a.pid_fd)
    except (JailError, cg.CgroupError, OSError, ValueError) as e:
        print(f"nodesvc-jailer: {e}", file=sys.stderr)
        return 2
    try:
        # Firecracker clears the env too; the command may want its pid as the host sees it
        os.execve(cmd[0], cmd, {**env, "NODESVC_JAIL_HOST_PID": str(host_pid)})
    except OSError as e:
        print(f"nodesvc-jailer: cannot exec {cmd[0]}: {e.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
