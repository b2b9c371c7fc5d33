"""Undo a jail once its VMM is gone, however it ended; and sweep up after dead VMs.

`cleanup` is idempotent and safe to repeat after a crash half-way: it works from the
record (`<base>/<id>/jail.json`, written before anything else was made) and from what
exists. Order: the cgroup (any process still inside is SIGKILLed first: a VMM that must
end has ended), the directory (a plain directory on the host: the jail's mounts lived only
in its own mount namespace), and the uid lock last, so a number is never handed out while
anything of its old VM remains.
"""

from __future__ import annotations

import json
import os
import shutil

from . import cgroup as cg
from .jail import DEFAULT_BASE, FAULT, RECORD, ID_RE
from .uids import UidAllocator


def read_record(vm_id: str, base_dir: str = DEFAULT_BASE) -> dict | None:
    try:
        with open(os.path.join(base_dir, vm_id, RECORD)) as f:
            rec = json.load(f)
        return rec if isinstance(rec, dict) else None
    except (OSError, ValueError):
        return None


def read_fault(vm_id: str, base_dir: str = DEFAULT_BASE) -> str | None:
    """The SIGSYS reporter's line ("seccomp: vcpu thread 12 made forbidden syscall socket
    (41)"), if the VMM died of a seccomp violation. Read it before `cleanup`."""
    try:
        with open(os.path.join(base_dir, vm_id, FAULT)) as f:
            text = f.read().strip()
    except OSError:
        return None
    return text.splitlines()[0] if text else None


def fault_syscall(vm_id: str, base_dir: str = DEFAULT_BASE) -> str | None:
    """Just the offending syscall's name, for a FAILED reason."""
    line = read_fault(vm_id, base_dir)
    if not line or " made forbidden syscall " not in line:
        return None
    return line.split(" made forbidden syscall ", 1)[1].split(" ", 1)[0]


def memory_limit_hit(vm_id: str, base_dir: str = DEFAULT_BASE) -> int | None:
    """The cgroup memory limit (bytes) if the OOM killer ended a process of this VM's
    cgroup, else None. Read it before `cleanup` (which removes the cgroup)."""
    rec = read_record(vm_id, base_dir)
    if not rec:
        return None
    try:
        group = cg.Cgroup(rec.get("cgroup_version") or 1, vm_id,
                          rec.get("parent_cgroup", "nodesvc"),
                          rec.get("mounts_path") or cg.PROC_MOUNTS)
    except cg.CgroupError:
        return None
    if group.oom_kills() <= 0:
        return None
    return (rec.get("limits") or {}).get("memory_bytes") or 0


def cleanup(vm_id: str, base_dir: str = DEFAULT_BASE, *, uid_state_dir: str | None = None,
            parent_cgroup: str | None = None, cgroup_version: int | None = None,
            mounts_path: str | None = None) -> dict:
    """Remove everything the jail of `vm_id` made; returns what was left behind (empty
    lists when all is gone). Arguments override the record (needed when it is missing)."""
    rec = read_record(vm_id, base_dir) or {}
    mounts = mounts_path or rec.get("mounts_path") or cg.PROC_MOUNTS
    parent = parent_cgroup if parent_cgroup is not None else rec.get("parent_cgroup", "nodesvc")
    left: dict[str, list] = {"cgroups": [], "dirs": [], "uids": []}
    try:
        version = cgroup_version or rec.get("cgroup_version") or cg.detect_version(mounts)
        group = cg.Cgroup(version, vm_id, parent, mounts)
        if not group.remove(kill=True):
            left["cgroups"] = group.existing_dirs()
    except cg.CgroupError:
        pass
    d = os.path.join(base_dir, vm_id)
    shutil.rmtree(d, ignore_errors=True)
    if os.path.exists(d):
        left["dirs"].append(d)
    state = uid_state_dir or rec.get("uid_state_dir")
    if state and os.path.isdir(state) and not left["cgroups"]:
        alloc = UidAllocator(state)
        alloc.release(vm_id)
        if alloc.uid_of(vm_id) is not None:
            left["uids"].append(alloc.uid_of(vm_id))
    return {k: v for k, v in left.items() if v}


def known_jails(base_dir: str = DEFAULT_BASE, *, uid_state_dir: str | None = None,
                parent_cgroup: str = "nodesvc", mounts_path: str = cg.PROC_MOUNTS) -> set[str]:
    """Ids of every VM that has a jail dir, a cgroup under the parent, or a uid lock."""
    ids: set[str] = set()
    if os.path.isdir(base_dir):
        ids.update(n for n in os.listdir(base_dir) if ID_RE.match(n))
    try:
        version = cg.detect_version(mounts_path)
        probe = cg.Cgroup(version, "x", parent_cgroup, mounts_path)
        for m in {os.path.dirname(p) for p in _leaf_parents(probe)}:
            if os.path.isdir(m):
                ids.update(n for n in os.listdir(m)
                           if ID_RE.match(n) and os.path.isdir(os.path.join(m, n)))
    except (cg.CgroupError, OSError):
        pass
    if uid_state_dir and os.path.isdir(uid_state_dir):
        ids.update(UidAllocator(uid_state_dir).owned().values())
    return ids


def _leaf_parents(probe: cg.Cgroup) -> list[str]:
    mounts = [d for t, d, _ in probe._mounts if t == ("cgroup2" if probe.version == 2
                                                      else "cgroup")]
    return [probe.leaf(m) for m in mounts]


def is_alive(vm_id: str, base_dir: str = DEFAULT_BASE, *, parent_cgroup: str = "nodesvc",
             mounts_path: str = cg.PROC_MOUNTS) -> bool:
    """A jail is alive while any process is in its cgroup."""
    rec = read_record(vm_id, base_dir) or {}
    try:
        version = rec.get("cgroup_version") or cg.detect_version(mounts_path)
        return bool(cg.Cgroup(version, vm_id, rec.get("parent_cgroup", parent_cgroup),
                              rec.get("mounts_path", mounts_path)).pids())
    except cg.CgroupError:
        return False


def sweep(base_dir: str = DEFAULT_BASE, *, live: set[str] | None = None,
          uid_state_dir: str | None = None, parent_cgroup: str = "nodesvc",
          mounts_path: str = cg.PROC_MOUNTS) -> list[str]:
    """Clean up every jail whose VM no longer exists; returns the ids cleaned.

    `live`: the ids the node knows are running (e.g. after re-adoption); None means
    "judge by the cgroups": a jail with no process in its cgroup is dead. A jail whose VM
    is in `live` is never touched."""
    done = []
    for vm_id in sorted(known_jails(base_dir, uid_state_dir=uid_state_dir,
                                    parent_cgroup=parent_cgroup, mounts_path=mounts_path)):
        if live is not None and vm_id in live:
            continue
        if live is None and is_alive(vm_id, base_dir, parent_cgroup=parent_cgroup,
                                     mounts_path=mounts_path):
            continue
        cleanup(vm_id, base_dir, uid_state_dir=uid_state_dir, parent_cgroup=parent_cgroup,
                mounts_path=mounts_path)
        done.append(vm_id)
    return done
