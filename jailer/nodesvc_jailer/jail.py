"""The jail: `Jail(...).enter()` turns the calling (freshly forked) process into a confined
VMM process, in Firecracker's jailer order (shared/design/SNAPSHOT_JAIL_MMDS_FACTS.md §2):

 1. close inherited fds (all but `keep_fds`)       7. one unshare: new mount, IPC, UTS
 2. validate the VM id                                (and network: `new_netns`; PID when
 3. join the VM's network namespace (setns)           it forks) namespaces
 4. rlimits: nofile, fsize, core 0                  8. / made MS_SLAVE|MS_REC, the root
 5. uid/gid (allocated unless given)                   bound onto itself, pivot_root, the
 6. cgroup(s) with the limits, joined; the per-VM      old root detached; /dev a tmpfs
    dir `<base>/<id>/root` (/dev, /run)                with only kvm, net/tun, urandom
                                                    9. PID namespace (see below)
                                                   10. NO_NEW_PRIVS, every capability
                                                       dropped, unprivileged uid/gid
                                                   11. seccomp: the SIGSYS reporter armed and
                                                       the "vmm" baseline filter loaded

PID namespace: the VMM is pid 1 of its own (alone there, it can see or signal no other
process, and when it ends the namespace ends). Either the caller is already there
("cloned": the zygote made it with clone(CLONE_PARENT | CLONE_NEWPID), so the node is its
parent; no fork here), or `enter` forks once, since unshare(CLONE_NEWPID) moves only
future children; the child returns, and the parent, still in the old namespace, either
 - "exit"s at once after writing the child's pid to `pid_fd` (a parent that is
   PR_SET_CHILD_SUBREAPER inherits and reaps the VMM), or
 - stays as a "relay" (the CLI): unprivileged, it forwards SIGTERM/SIGINT/SIGHUP and exits
   with the child's status; the child has PDEATHSIG=SIGKILL so it never outlives it.

Python can't be exec'd into an empty root, so in the zygote model everything is imported
and every file opened before `enter()`; afterwards an import raises ImportError naming the
module (`import_guard`), and seccomp forbids open() outside the control thread anyway.
For exec mode (`nodesvc-jailer -- cmd`), `ro_binds` puts read-only host paths in the jail.
"""

from __future__ import annotations

import json
import linecache
import os
import re
import resource
import signal
import stat
import sys
import time
from dataclasses import asdict, dataclass, field

from . import cgroup as cg
from . import linux as L
from . import seccomp
from .uids import UidAllocator

ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")     # Firecracker's rule
DEFAULT_BASE = "/srv/nodesvc/jail"
RECORD, FAULT, ROOT = "jail.json", "fault", "root"
# (path in the jail, major, minor): what a microVM needs and nothing else
DEVICES = {"kvm": ("dev/kvm", 10, 232), "tun": ("dev/net/tun", 10, 200),
           "urandom": ("dev/urandom", 1, 9)}
RELAYED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


class JailError(RuntimeError):
    pass


def validate_id(vm_id: str) -> str:
    if not isinstance(vm_id, str) or not ID_RE.match(vm_id):
        raise JailError(f"invalid VM id {vm_id!r}: 1-64 characters, letters, digits and '-'")
    return vm_id


@dataclass
class Jail:
    vm_id: str
    base_dir: str = DEFAULT_BASE
    uid: int | None = None              # None: from `uid_state_dir`'s allocator
    gid: int | None = None              # None: same as uid
    uid_state_dir: str | None = None    # where the per-uid lock files live
    uid_range: tuple[int, int] = (900_000, 999_999)
    netns: str | None = None            # a name under /var/run/netns or a path
    new_netns: bool = False             # else a new, empty one (no network but TAP fds)
    cgroup_version: int | None = None   # None: detected from /proc/mounts
    parent_cgroup: str = "nodesvc"
    limits: cg.Limits = field(default_factory=cg.Limits)
    mounts_path: str = cg.PROC_MOUNTS
    cgroup_mounts: list | None = None   # read_mounts(mounts_path), if the caller has it
    nofile: int = 2048                  # Firecracker's default
    fsize: int | None = None            # largest file the VMM may write (bytes)
    devices: tuple[str, ...] = ("kvm", "tun", "urandom")
    new_pid_ns: bool = True
    pid_ns_parent: str = "exit"         # "cloned" (zygote), "exit" or "relay" (CLI)
    pid_fd: int | None = None           # "exit" mode: the child's host pid is written here
    keep_fds: tuple[int, ...] = ()
    ro_binds: tuple[str, ...] = ()      # host paths visible read-only inside (exec mode)
    seccomp: bool = True                # arm the SIGSYS reporter, load the "vmm" filter
    import_guard: bool = True
    #: set in the jailed process: its pid in the node's pid namespace (it is 1 in its own)
    host_pid: int | None = field(default=None, init=False)
    _relay_alive: int | None = field(default=None, init=False, repr=False)

    # -- where things are ----------------------------------------------------------------
    @property
    def jail_dir(self) -> str:
        return os.path.join(self.base_dir, self.vm_id)

    @property
    def root(self) -> str:
        return os.path.join(self.jail_dir, ROOT)

    def cgroup(self) -> cg.Cgroup:
        mounts = self.cgroup_mounts
        if mounts is None:
            mounts = cg.read_mounts(self.mounts_path)
        version = self.cgroup_version or cg.detect_version(self.mounts_path, mounts)
        return cg.Cgroup(version, self.vm_id, self.parent_cgroup, self.mounts_path, mounts)

    def cleanup(self, vm_id: str | None = None) -> dict:
        """Remove what the jail of `vm_id` (default: this one) made; idempotent. Call it
        once the VMM process is gone. Returns what could not be removed (empty: all)."""
        from .cleanup import cleanup
        return cleanup(vm_id or self.vm_id, self.base_dir, uid_state_dir=self.uid_state_dir,
                       parent_cgroup=self.parent_cgroup, cgroup_version=self.cgroup_version,
                       mounts_path=self.mounts_path)

    # -- the steps -----------------------------------------------------------------------
    def enter(self) -> None:
        """Confine the calling process. Returns in the jailed process (see module doc)."""
        keep = set(self.keep_fds) | ({self.pid_fd} if self.pid_fd is not None else set())
        close_fds_except(keep | {0, 1, 2})
        validate_id(self.vm_id)
        if self.pid_ns_parent not in ("cloned", "exit", "relay"):
            raise JailError("pid_ns_parent must be 'cloned', 'exit' or 'relay', not "
                            f"{self.pid_ns_parent!r}")
        cloned = self.new_pid_ns and self.pid_ns_parent == "cloned"
        if cloned:
            if os.getpid() != 1:
                raise JailError("pid_ns_parent 'cloned': the caller must be pid 1 of a new "
                                "PID namespace (linux.fork_with(CLONE_NEWPID))")
            self.host_pid = int(os.readlink("/proc/self"))  # the host's /proc, still
        if self.netns and self.new_netns:
            raise JailError("netns and new_netns exclude each other")
        if self.netns:
            join_netns(self.netns)
        self._rlimits()
        uid, gid = self._ids()
        try:
            os.mkdir(self.jail_dir, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:       # no base dir yet
            os.makedirs(self.jail_dir, mode=0o700, exist_ok=True)
        group = self.cgroup()
        self._write_record(uid, gid, group.version)
        props = self.limits.properties(group.version)
        if self.new_pid_ns and self.pid_ns_parent == "relay" and self.limits.pids:
            props["pids.max"] = str(self.limits.pids + 1)   # the relay counts too
        if props:
            group.create(props)
            group.attach()
        # The reporter's file lives beside the root, out of the jailed process's reach
        # except through this descriptor, opened before the root is pivoted away.
        fault_fd = os.open(os.path.join(self.jail_dir, FAULT),
                           os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC,
                           0o600)
        self._make_root(uid, gid)
        forks = self.new_pid_ns and not cloned
        # One unshare for every namespace: ~1 ms where four calls took ~1.5 ms.
        L.unshare(L.CLONE_NEWNS | L.CLONE_NEWIPC | L.CLONE_NEWUTS
                  | (L.CLONE_NEWNET if self.new_netns else 0)
                  | (L.CLONE_NEWPID if forks else 0))
        self._pivot(uid, gid)
        if forks:
            self._fork_into_pid_ns(uid, gid)
        drop_privileges(uid, gid)
        if self._relay_alive is not None:
            _die_with_relay(self._relay_alive)
            self._relay_alive = None
        if self.seccomp:
            seccomp.arm(fault_fd)
            seccomp.install("vmm")
        if self.import_guard:
            sys.meta_path.insert(0, ImportGuard())
        # A traceback printed in here must not try to read source files (the filters
        # forbid open() on most threads, and nothing is on disk anyway).
        linecache.checkcache = lambda *args, **kwargs: None
        linecache.updatecache = lambda *args, **kwargs: []

    def _rlimits(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))    # guest memory never hits a disk
        if self.fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.fsize, self.fsize))

    def _ids(self) -> tuple[int, int]:
        uid = self.uid
        if uid is None:
            if not self.uid_state_dir:
                raise JailError("no uid given and no uid_state_dir to allocate one from")
            uid = UidAllocator(self.uid_state_dir, *self.uid_range).allocate(self.vm_id)
        if uid == 0:
            raise JailError("the jailed process must not run as uid 0")
        gid = uid if self.gid is None else self.gid
        if gid == 0:
            raise JailError("the jailed process must not run as gid 0")
        return uid, gid

    def _write_record(self, uid: int, gid: int, cgroup_version: int) -> None:
        """What cleanup needs to undo this jail, written before anything else is made."""
        rec = {"vm_id": self.vm_id, "uid": uid, "gid": gid,
               "uid_allocated": self.uid is None, "uid_state_dir": self.uid_state_dir,
               "cgroup_version": cgroup_version,
               "parent_cgroup": self.parent_cgroup, "mounts_path": self.mounts_path,
               "created": time.time(), "limits": asdict(self.limits)}
        tmp = os.path.join(self.jail_dir, RECORD + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(rec).encode())  # dumps: the C encoder
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(self.jail_dir, RECORD))

    def _make_root(self, uid: int, gid: int) -> None:
        """The root's directories on the host: itself, /run (the node's view of the VMM's
        sockets and FIFOs) and /dev, where _devices() mounts the jail's own tmpfs."""
        root = self.root
        for d in ("", "dev", "run"):    # parents first: mkdir, not makedirs
            p = os.path.join(root, d)
            try:
                os.mkdir(p, 0o700)          # (the umask only clears group/other bits)
            except FileExistsError:         # a jail dir left by a crash: make it ours
                os.chmod(p, 0o700)
            os.chown(p, uid, gid)
        for name in self.devices:
            if name not in DEVICES:
                raise JailError(f"unknown device {name!r} (one of {', '.join(DEVICES)})")

    def _devices(self, uid: int, gid: int) -> None:
        """/dev: a small read-only tmpfs of the jail's own mount namespace, holding only
        the device nodes a VM needs (and the mount points of `ro_binds`). Nothing of it is on the host's disk (a crashed jail leaves no
        device node behind), and it costs a fraction of the journaled mkdir/mknod calls
        (ext4 here: ~0.4 ms against 0.3-1.8 ms)."""
        dev = os.path.join(self.root, "dev")
        L.mount("tmpfs", dev, "tmpfs", L.MS_NOSUID | L.MS_NOEXEC,
                f"mode=0700,uid={uid},gid={gid},size=16k,nr_inodes=16")
        for name in self.devices:
            rel, major, minor = DEVICES[name]
            p = os.path.join(self.root, rel)
            parent = os.path.dirname(p)
            if not os.path.isdir(parent):
                os.mkdir(parent, 0o700)
                os.chown(parent, uid, gid)
            os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(major, minor))
            os.chown(p, uid, gid)
        for host in self.ro_binds:  # where they go (under /dev: in the tmpfs)
            target = os.path.join(self.root, host.lstrip("/"))
            if os.path.isdir(host):
                os.makedirs(target, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                open(target, "a").close()
        # Read-only from now on: device nodes still open for writing on a read-only
        # mount (only regular files, directories and links get EROFS).
        L.mount(None, dev, None, L.MS_REMOUNT | L.MS_BIND | L.MS_RDONLY | L.MS_NOSUID
                | L.MS_NOEXEC)

    def _pivot(self, uid: int, gid: int) -> None:
        """In the new mount namespace: the root becomes the jail's."""
        root = self.root
        # Nothing we mount from here on propagates back to the host's namespace.
        L.mount(None, "/", None, L.MS_SLAVE | L.MS_REC)
        self._devices(uid, gid)
        L.mount(root, root, None, L.MS_BIND | L.MS_REC)
        L.mount(None, root, None, L.MS_BIND | L.MS_REMOUNT | L.MS_NOSUID | L.MS_NOEXEC)
        for host in self.ro_binds:
            target = os.path.join(root, host.lstrip("/"))
            L.mount(host, target, None, L.MS_BIND | L.MS_REC)
            L.mount(None, target, None, L.MS_BIND | L.MS_REMOUNT | L.MS_RDONLY | L.MS_NOSUID)
        os.chdir(root)
        # pivot_root(".", "."): the old root is stacked on the new one, at the same place,
        # and detached from there (pivot_root(2)); no directory to make and remove.
        L.pivot_root(".", ".")
        L.umount2(".", L.MNT_DETACH)
        os.chdir("/")

    def _fork_into_pid_ns(self, uid: int, gid: int) -> None:
        relay = self.pid_ns_parent == "relay"
        if relay:   # before fork, so no signal falls between fork and the handler
            for s in RELAYED_SIGNALS:
                signal.signal(s, _forward)
        # The relay holds `alive_w` (never written); EOF on `alive_r` means it is gone.
        alive_r, alive_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        pid_r, pid_w = os.pipe2(os.O_CLOEXEC)   # the child learns its pid outside
        pid = os.fork()
        if pid == 0:        # pid 1 of the new namespace: the VMM
            os.close(alive_w)
            os.close(pid_w)
            with os.fdopen(pid_r, "rb") as f:
                self.host_pid = int(f.read() or 0) or None
            os.setsid()     # the VMM leads its own session: no group signal reaches it
            for s in RELAYED_SIGNALS:
                signal.signal(s, signal.SIG_DFL)
            if relay:   # PDEATHSIG once our uid changed: a credential change clears it
                self._relay_alive = alive_r
            else:
                os.close(alive_r)
            return
        os.close(alive_r)
        os.close(pid_r)
        os.write(pid_w, str(pid).encode())
        os.close(pid_w)
        if not relay:
            if self.pid_fd is not None:
                os.write(self.pid_fd, f"{pid}\n".encode())
            os._exit(0)
        _Relay.child = pid
        drop_privileges(uid, gid)
        os._exit(_wait_and_mirror(pid))


class _Relay:
    child = 0


def _forward(signum, frame) -> None:
    if _Relay.child:
        try:
            os.kill(_Relay.child, signum)
        except ProcessLookupError:
            pass


def _die_with_relay(alive_r: int) -> None:
    """SIGKILL when the relay dies. Set after setresuid: the kernel clears the parent-death
    signal on every credential change (commit_creds), so set before it, it never fires."""
    L.prctl(L.PR_SET_PDEATHSIG, signal.SIGKILL)
    try:    # (getppid() is 0 here: the parent is outside our pid namespace)
        if os.read(alive_r, 1) == b"":
            os._exit(1)     # the relay died before the prctl
    except BlockingIOError:
        pass
    os.close(alive_r)


def _wait_and_mirror(pid: int) -> int:
    """Wait for the jailed child; die the way it died (same signal) or exit its code."""
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        for s in RELAYED_SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
        L.prctl(L.PR_SET_DUMPABLE, 0)   # never a core of a VMM image
        os.kill(os.getpid(), sig)
        return 128 + sig
    return os.WEXITSTATUS(status)


def close_fds_except(keep: set[int]) -> None:
    """close_range over the gaps between the fds to keep (Firecracker closes 3..~0)."""
    start = 0
    for fd in sorted(keep) + [1 << 31]:
        if fd > start:
            try:
                L.close_range(start, fd - 1)
            except OSError:
                os.closerange(start, fd)
        start = fd + 1


def join_netns(netns: str) -> None:
    path = netns if "/" in netns else os.path.join("/var/run/netns", netns)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        L.setns(fd, L.CLONE_NEWNET)
    finally:
        os.close(fd)


def drop_privileges(uid: int, gid: int) -> None:
    """NO_NEW_PRIVS, empty bounding/ambient sets, uid/gid, then no capability at all."""
    L.prctl(L.PR_SET_NO_NEW_PRIVS, 1)
    for cap in range(L.cap_last_cap() + 1):
        L.prctl(L.PR_CAPBSET_DROP, cap)
    L.prctl(L.PR_CAP_AMBIENT, L.PR_CAP_AMBIENT_CLEAR_ALL)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)     # clears permitted/effective (no SECBIT_KEEP_CAPS)
    L.drop_all_capabilities()       # and inheritable, explicitly
    L.prctl(L.PR_SET_DUMPABLE, 0)   # no ptrace, no core, /proc/<pid> owned by root


class ImportGuard:
    """First on sys.meta_path once jailed: a lazy import fails loudly, naming the module."""

    def find_spec(self, name, path=None, target=None):
        raise ImportError(f"module {name!r} imported after the jail was entered: the jail "
                          "has no Python runtime on disk; import it before Jail.enter()")

    def find_module(self, name, path=None):     # pragma: no cover (old protocol)
        return self.find_spec(name, path)
