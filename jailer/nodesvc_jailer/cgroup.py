"""Per-VM cgroups, v1 and v2, in Firecracker's manner (`src/jailer/src/cgroup.rs`).

Which version a host runs is read from /proc/mounts: any v1 `cgroup` mount carrying a
controller we use means v1 (hybrid hosts, like ours, keep a mostly empty cgroup2 at
/sys/fs/cgroup/unified); otherwise the first `cgroup2` mount means v2.

A VM's cgroup is `<mount>/<parent>/<vm_id>` — in every controller's hierarchy for v1, once
for v2. High-level limits (memory bytes, CPUs, pids) become each version's files; raw
`file=value` properties (Firecracker's `--cgroup`) are written as given. The jailed process
joins (`Cgroup.attach`: v1 `tasks` when single-threaded, else `cgroup.procs`) before it
enters its mount namespace (afterwards the hierarchy is out of its sight).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass, field

PROC_MOUNTS = "/proc/mounts"
CPU_PERIOD_US = 100_000


class CgroupError(RuntimeError):
    pass


@dataclass
class Limits:
    memory_bytes: int | None = None     # guest memory + the VMM's allowance
    cpus: float | None = None           # CPU bandwidth, in CPUs (1.5 = 150 ms per 100 ms)
    pids: int | None = None             # threads count: vCPUs + device/control threads
    raw: dict[str, str] = field(default_factory=dict)   # "cpuset.cpus" -> "0-1", ...

    def properties(self, version: int) -> dict[str, str]:
        props: dict[str, str] = {}
        if self.memory_bytes is not None:
            props["memory.limit_in_bytes" if version == 1 else "memory.max"] = str(
                self.memory_bytes)
            if version == 2:
                props["memory.swap.max"] = "0"      # a guest's memory never goes to swap
        if self.cpus is not None:
            quota = max(1000, int(self.cpus * CPU_PERIOD_US))
            if version == 1:
                props["cpu.cfs_period_us"] = str(CPU_PERIOD_US)
                props["cpu.cfs_quota_us"] = str(quota)
            else:
                props["cpu.max"] = f"{quota} {CPU_PERIOD_US}"
        if self.pids is not None:
            props["pids.max"] = str(self.pids)
        props.update(self.raw)
        return props


def read_mounts(path: str = PROC_MOUNTS) -> list[tuple[str, str, list[str]]]:
    """(fstype, mount dir, options) of every cgroup/cgroup2 line."""
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
                out.append((parts[2], parts[1].replace("\\040", " "), parts[3].split(",")))
    return out


def detect_version(mounts_path: str = PROC_MOUNTS, mounts: list | None = None) -> int:
    """1 or 2, from `mounts` (read_mounts' table) or else the file at `mounts_path`."""
    if mounts is None:
        mounts = read_mounts(mounts_path)
    wanted = {"memory", "cpu", "pids"}
    if any(t == "cgroup" and wanted & set(opts) for t, _, opts in mounts):
        return 1
    if any(t == "cgroup2" for t, _, _ in mounts):
        return 2
    raise CgroupError(f"no cgroup hierarchy in {mounts_path}")


def _controller(prop: str) -> str:
    return prop.split(".", 1)[0]


def _write(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise CgroupError(f"cannot write {value!r} to {path}: {e.strerror}") from None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _pids_in(dirs: list[str]) -> set[int]:
    pids: set[int] = set()
    for d in dirs:
        try:
            pids.update(int(p) for p in _read(os.path.join(d, "cgroup.procs")).split())
        except OSError:
            pass
    return pids


class Cgroup:
    """One VM's cgroup(s). `dirs` are the directories it created (or would)."""

    def __init__(self, version: int, vm_id: str, parent: str = "nodesvc",
                 mounts_path: str = PROC_MOUNTS, mounts: list | None = None):
        if version not in (1, 2):
            raise CgroupError(f"cgroup version must be 1 or 2, not {version}")
        self.version, self.vm_id, self.mounts_path = version, vm_id, mounts_path
        self.parent = parent.strip("/")
        self._mounts = read_mounts(mounts_path) if mounts is None else mounts

    # -- where things live -----------------------------------------------------------
    def _v1_mount(self, controller: str) -> str:
        for t, d, opts in self._mounts:
            if t == "cgroup" and controller in opts:
                return d
        raise CgroupError(f"no cgroup v1 hierarchy has the {controller!r} controller")

    def _v2_mount(self) -> str:
        for t, d, _ in self._mounts:
            if t == "cgroup2":
                return d
        raise CgroupError("no cgroup2 hierarchy is mounted")

    def leaf(self, mount: str) -> str:
        return os.path.join(mount, self.parent, self.vm_id) if self.parent else \
            os.path.join(mount, self.vm_id)

    def existing_dirs(self) -> list[str]:
        """Every directory of this VM's cgroup that exists now (for cleanup and sweeps)."""
        if self.version == 2:
            mounts = [d for t, d, _ in self._mounts if t == "cgroup2"][:1]
        else:
            mounts = [d for t, d, opts in self._mounts if t == "cgroup"]
        return [p for p in (self.leaf(m) for m in mounts) if os.path.isdir(p)]

    # -- making it -------------------------------------------------------------------
    def create(self, props: dict[str, str]) -> list[str]:
        """Make the cgroup(s) and write the properties; returns the leaf directories."""
        if self.version == 1:
            return self._create_v1(props)
        return self._create_v2(props)

    def _create_v1(self, props: dict[str, str]) -> list[str]:
        leaves: dict[str, str] = {}
        for prop in props:
            mount = self._v1_mount(_controller(prop))
            if mount not in leaves:
                leaves[mount] = self.leaf(mount)
                _makedirs(leaves[mount])
                # cpuset.cpus/mems start empty in a new v1 cgroup, and an empty cpuset
                # refuses tasks: inherit them from the parent, as Firecracker does.
                if "cpuset" in next(o for t, d, o in self._mounts if d == mount):
                    _inherit_cpuset(mount, leaves[mount])
            _write(os.path.join(leaves[mount], prop), props[prop])
        return list(leaves.values())

    def _create_v2(self, props: dict[str, str]) -> list[str]:
        mount = self._v2_mount()
        wanted = {_controller(p) for p in props}
        have = set(_read(os.path.join(mount, "cgroup.controllers")).split())
        if wanted - have:
            raise CgroupError(f"cgroup2 at {mount} lacks controller(s) "
                              f"{', '.join(sorted(wanted - have))}")
        leaf = self.leaf(mount)
        # Each ancestor of the leaf delegates the controllers to its children.
        path = mount
        for part in [p for p in os.path.relpath(leaf, mount).split("/")][:-1]:
            _enable_v2(path, wanted)
            path = os.path.join(path, part)
            _makedirs(path)
        _enable_v2(path, wanted)
        _makedirs(leaf)
        for prop, value in props.items():
            if prop == "memory.swap.max" and not os.path.exists(os.path.join(leaf, prop)):
                continue    # no swap accounting on this kernel: nothing to limit
            _write(os.path.join(leaf, prop), value)
        return [leaf]

    def attach(self, pid: int = 0) -> None:
        """Move process `pid` (0: the caller) into every leaf."""
        dirs = self.existing_dirs()
        if not dirs:
            raise CgroupError(f"the cgroup of {self.vm_id} does not exist")
        # A write to cgroup.procs write-locks the global cgroup_threadgroup_rwsem, which
        # waits for an RCU grace period (10-90 ms on our hosts, most of the jail's wall
        # time). A v1 `tasks` write of "0" moves only the calling thread, and the kernel
        # skips that lock for it (cgroup_procs_write_start: pid 0, one thread). For a
        # single-threaded caller (a freshly forked zygote child) that thread is the
        # whole process, and every process it forks later starts in the same cgroups.
        own = pid in (0, os.getpid())
        if self.version == 1 and own and _single_threaded():
            name, value = "tasks", "0"
        else:
            name, value = "cgroup.procs", str(pid or os.getpid())
        for d in dirs:
            _write(os.path.join(d, name), value)

    # -- the end ---------------------------------------------------------------------
    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer ended in this cgroup (because of its
        memory limit): v1 `memory.oom_control`'s oom_kill, v2 `memory.events`'."""
        if self.version == 1:
            try:
                path = os.path.join(self.leaf(self._v1_mount("memory")), "memory.oom_control")
            except CgroupError:
                return 0
        else:
            path = os.path.join(self.leaf(self._v2_mount()), "memory.events")
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def pids(self) -> set[int]:
        return _pids_in(self.existing_dirs())

    def remove(self, kill: bool = True, timeout: float = 2.0) -> bool:
        """Kill what is left inside (when `kill`), then rmdir; True once nothing remains."""
        dirs = self.existing_dirs()
        deadline = time.monotonic() + timeout
        while dirs:
            if kill:
                for pid in _pids_in(dirs):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            for d in list(dirs):
                try:
                    os.rmdir(d)
                    dirs.remove(d)
                except FileNotFoundError:
                    dirs.remove(d)
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        raise
            if not dirs or time.monotonic() > deadline:
                break
            time.sleep(0.005)   # a killed process leaves its cgroup when it is reaped
        return not dirs


def _single_threaded() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _makedirs(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CgroupError(f"cannot create cgroup {path}: {e.strerror}") from None


def _enable_v2(path: str, controllers: set[str]) -> None:
    ctl = os.path.join(path, "cgroup.subtree_control")
    enabled = set(_read(ctl).split()) if os.path.exists(ctl) else set()
    missing = controllers - enabled
    if missing:
        _write(ctl, " ".join(f"+{c}" for c in sorted(missing)))


def _inherit_cpuset(mount: str, leaf: str) -> None:
    chain = []
    d = leaf
    while d != mount and d.startswith(mount):
        chain.append(d)
        d = os.path.dirname(d)
    for d in reversed(chain):   # top-down: each copies its parent's value if it has none
        for f in ("cpuset.cpus", "cpuset.mems"):
            mine, theirs = os.path.join(d, f), os.path.join(os.path.dirname(d), f)
            if os.path.exists(mine) and not _read(mine) and os.path.exists(theirs):
                _write(mine, _read(theirs))
