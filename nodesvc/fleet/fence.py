"""The fence watchdog: a small process beside the node service that SIGKILLs the node's fleet
VMMs once the node's lease may have expired, even when the node service itself is hung
(SIGSTOP, a stuck loop) or dead. VMMs outlive the node service by design, so the service
alone cannot promise that they stop in time.

    python -m nodesvc.fleet.fence --state-dir /var/lib/nodesvc

The node agent writes `<state-dir>/fleet/fence.json` = {"lease": id, "kill_at": t} (t on
CLOCK_MONOTONIC, which every process on the host shares) after each acknowledged keep-alive.
Past t, every VMM of a VM labelled as a fleet VM is killed, again every poll, until a newer
lease pushes t forward. One watchdog per state dir (flock); it exits once nothing is left to
guard: t passed, no fleet VMM alive and no node service holding the state dir.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import logging
import os
import signal
import sys
import time

from .model import LABEL_FLEET

log = logging.getLogger("nodesvc.fleet.fence")
POLL_S = 0.05


def fence_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "fleet")


def write_deadline(state_dir: str, lease: int, kill_at: float,
                   cgroup_parent: str | None = None) -> None:
    """Atomic replace (no fsync: after a host crash nothing runs that could need fencing).
    cgroup_parent: where jailed VMMs' cgroups live (each VM's is <parent>/<vm id>)."""
    d = fence_dir(state_dir)
    tmp = os.path.join(d, ".fence.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"lease": lease, "kill_at": kill_at, "cgroup_parent": cgroup_parent}, f)
    os.replace(tmp, os.path.join(d, "fence.json"))


def read_deadline(state_dir: str) -> tuple[int, float, str | None] | None:
    try:
        with open(os.path.join(fence_dir(state_dir), "fence.json")) as f:
            d = json.load(f)
        return int(d["lease"]), float(d["kill_at"]), d.get("cgroup_parent")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _fleet_records(state_dir: str) -> list[dict]:
    """VM records the node marks as fleet VMs (written at CreateVm, before any VMM exists)."""
    out = []
    vm_dir = os.path.join(state_dir, "vms")
    try:
        names = os.listdir(vm_dir)
    except OSError:
        return out
    for name in names:
        if name.endswith(".json") and not name.startswith("."):
            try:
                with open(os.path.join(vm_dir, name)) as f:
                    rec = json.load(f)
            except (OSError, ValueError):
                continue
            if LABEL_FLEET in rec.get("labels", {}):
                out.append(rec)
    return out


def _start_time(pid: int) -> int | None:
    """/proc/<pid>/stat starttime of a live process (None if gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _cgroup_pids(vm_ids: list[str], parent: str) -> set[int]:
    """Processes in jailed VMs' cgroups: a jailed VMM joins its cgroup before it runs any
    guest code, so this covers one launched a moment before its record was written."""
    try:
        from nodesvc_jailer import cgroup as cg
        version = cg.detect_version()
    except Exception:       # no jailer installed, no cgroup mount: records and cmdlines
        return set()
    out = set()
    for vm_id in vm_ids:
        try:
            out |= cg.Cgroup(version, vm_id, parent).pids()
        except Exception:
            continue
    return out


def fleet_vmm_pids(state_dir: str, cgroup_parent: str | None = None) -> list[int]:
    """The fleet VMs' VMM processes: by the pid in their record (checked against its start
    time, so a reused pid is never hit); unjailed ones also by a command line naming their
    run dir, jailed ones by their cgroup (both cover a VMM launched a moment before its
    record was written)."""
    recs = _fleet_records(state_dir)
    pids = set()
    if cgroup_parent and recs:
        pids |= _cgroup_pids([r["id"] for r in recs], cgroup_parent)
    for rec in recs:
        vmm = rec.get("vmm") or {}
        pid = vmm.get("pid")
        if pid and _start_time(pid) == vmm.get("start_time"):
            pids.add(pid)
    markers = [os.fsencode(os.path.join(state_dir, "run", r["id"]) + "/") for r in recs]
    if markers:
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        cmd = f.read()
                except OSError:
                    continue
                if any(m in cmd for m in markers):
                    pids.add(int(d))
    return sorted(pids)


def kill_fleet_vmms(state_dir: str, cgroup_parent: str | None = None) -> list[int]:
    killed = []
    for pid in fleet_vmm_pids(state_dir, cgroup_parent):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def _node_service_running(state_dir: str) -> bool:
    try:
        fd = os.open(os.path.join(state_dir, "lock"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)


def lock_watchdog(state_dir: str) -> int | None:
    """The watchdog's own lock; None if another watchdog holds it."""
    os.makedirs(fence_dir(state_dir), mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(fence_dir(state_dir), "fence.lock"),
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def watchdog_running(state_dir: str) -> bool:
    fd = lock_watchdog(state_dir)
    if fd is None:
        return True
    os.close(fd)
    return False


def run(state_dir: str) -> int:
    state_dir = os.path.abspath(state_dir)
    if lock_watchdog(state_dir) is None:
        return 0
    idle_since = None
    while True:
        d = read_deadline(state_dir)
        now = time.monotonic()
        expired = d is None or now >= d[1]
        if d is not None and expired:
            killed = kill_fleet_vmms(state_dir, d[2])
            if killed:
                log.warning("lease %x may have expired: killed fleet VMMs %s", d[0], killed)
        if expired and not _node_service_running(state_dir) and not fleet_vmm_pids(
                state_dir, d[2] if d else None):
            # Nothing to guard; linger a moment so a restarting node service can take over.
            idle_since = idle_since or now
            if now - idle_since > 2.0:
                return 0
        else:
            idle_since = None
        time.sleep(POLL_S)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nodesvc-fence", description=__doc__.split("\n")[0])
    p.add_argument("--state-dir", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="nodesvc-fence: %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    return run(args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
