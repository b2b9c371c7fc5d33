"""Confinement of the VMMs a real node service starts (jailed by default), seen from the
host. Markers: `jail` and `kvm`. The node fixtures are tests/service's; what is added:

- `jailed_node`: one jailed node service for a module's tests;
- `hostile_node`: the same with the TEST-ONLY hostile device enabled
  (NODESVC_TEST_PLUGINS=1, plugins/test_hostile_device) and host-side witnesses for
  what its acts aim at: a directory, a sentinel process, a TCP listener on 127.0.0.1,
  a Unix socket and an abstract Unix socket;
- `probe`: what /proc says about a process (status, namespaces, cgroups, root).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile

import pytest

from nodesvc.core.launcher import JailConfig
from nodesvc_jailer import cgroup as cg
from nodesvc_jailer import sweep
from tests.service.conftest import (  # noqa: F401 (fixtures)
    NodeServer, _kill_vmms, guest, make_server)

NS_KINDS = ("mnt", "pid", "ipc", "uts", "net")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "not root (jails need namespaces, cgroups and mknod)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no usable /dev/kvm"
    try:
        cg.detect_version()
    except cg.CgroupError:
        return "no cgroup hierarchy mounted"
    return None


def _node(env: dict | None = None, state_dir: str | None = None):
    why = _missing()
    if why:
        pytest.skip(why)
    d = state_dir or tempfile.mkdtemp(prefix="nsec-", dir="/tmp")
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:     # the node (and its zygote, and every VMM) inherits the environment
        s = NodeServer(d).start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return s


def remove_jails(state_dir: str) -> None:
    """Remove what the jails of a stopped node's VMMs left (their cgroups above all: the
    node lets its VMMs outlive it, so nobody else cleans up after a test's kill)."""
    jails = os.path.join(state_dir, "jail")
    parent = JailConfig(jails).parent_cgroup
    sweep(jails, live=set(), uid_state_dir=os.path.join(jails, ".uids"),
          parent_cgroup=parent)
    for t, d, _ in cg.read_mounts():
        if t == "cgroup" and os.path.isdir(os.path.join(d, parent)):
            try:
                os.rmdir(os.path.join(d, parent))
            except OSError:
                pass


def _close(s: NodeServer) -> None:
    s.stop()
    _kill_vmms(s.state_dir)
    remove_jails(s.state_dir)
    shutil.rmtree(s.state_dir, ignore_errors=True)


@pytest.fixture
def state_dir():
    """tests/service's state dir, whose jails are removed too once its VMMs are killed."""
    d = tempfile.mkdtemp(prefix="nsec-", dir="/tmp")
    yield d
    _kill_vmms(d)
    remove_jails(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def jailed_node():
    s = _node()
    yield s
    _close(s)


class Witnesses:
    """Host things the hostile acts aim at, and the means to tell they were not touched."""

    def __init__(self, base: str, node_socket: str):
        self.dir = os.path.join(base, "witness")
        os.makedirs(self.dir)
        self.sentinel = subprocess.Popen(["sleep", "3600"])
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.tcp.setblocking(False)
        self.unix_path = os.path.join(base, "witness.sock")
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.unix_path)
        self.unix.listen(4)
        self.unix.setblocking(False)
        self.abstract_name = f"nodesvc-hostile-{os.getpid()}"
        self.abstract = socket.socket(socket.AF_UNIX)
        self.abstract.bind("\0" + self.abstract_name)
        self.abstract.listen(4)
        self.abstract.setblocking(False)
        self.node_socket = node_socket
        self.mounts = self.mountinfo()

    def targets(self) -> dict:
        return {"dir": self.dir, "pid": self.sentinel.pid, "tcp_port": self.tcp.getsockname()[1],
                "node_socket": self.node_socket, "unix_socket": self.unix_path,
                "abstract": self.abstract_name}

    def mountinfo(self) -> list[str]:
        """Mounts at or under the witness dir (other tests on this host mount elsewhere,
        e.g. network namespaces under /run/netns)."""
        with open("/proc/self/mountinfo") as f:
            points = [ln.split()[4] for ln in f]
        top = os.path.dirname(self.dir)
        return sorted(p for p in points if p == top or p.startswith(top + "/"))

    def untouched(self) -> list[str]:
        """What changed on the host (empty: nothing)."""
        changed = []
        if os.listdir(self.dir):
            changed.append(f"files appeared in {self.dir}: {os.listdir(self.dir)}")
        if self.sentinel.poll() is not None:
            changed.append(f"sentinel {self.sentinel.pid} died ({self.sentinel.returncode})")
        else:
            with open(f"/proc/{self.sentinel.pid}/status") as f:
                tracer = next(ln for ln in f if ln.startswith("TracerPid:")).split()[1]
            if tracer != "0":
                changed.append(f"sentinel is traced by {tracer}")
        for name, sk in (("tcp", self.tcp), ("unix", self.unix), ("abstract", self.abstract)):
            try:
                conn, _ = sk.accept()
                conn.close()
                changed.append(f"the {name} listener got a connection")
            except BlockingIOError:
                pass
        if self.mountinfo() != self.mounts:
            changed.append(f"mounts appeared under {os.path.dirname(self.dir)}")
        return changed

    def close(self) -> None:
        self.sentinel.kill()
        self.sentinel.wait()
        for sk in (self.tcp, self.unix, self.abstract):
            sk.close()


@pytest.fixture(scope="module")
def hostile_node():
    why = _missing()
    if why:
        pytest.skip(why)
    base = tempfile.mkdtemp(prefix="nsec-w-", dir="/tmp")
    state_dir = tempfile.mkdtemp(prefix="nsec-", dir="/tmp")
    w = Witnesses(base, os.path.join(state_dir, "s.sock"))    # NodeServer's socket path
    s = None
    try:
        s = _node({"NODESVC_TEST_PLUGINS": "1",
                   "NODESVC_HOSTILE_TARGETS": json.dumps(w.targets())}, state_dir)
        assert s.socket == w.node_socket
        s.witnesses = w
        yield s
    finally:
        if s is not None:
            _close(s)
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
        w.close()
        shutil.rmtree(base, ignore_errors=True)


class Probe:
    """/proc views of a process, from the host."""

    @staticmethod
    def status(pid: int | str) -> dict[str, str]:
        with open(f"/proc/{pid}/status") as f:
            return {k: v.strip() for k, _, v in (ln.partition(":") for ln in f)}

    @staticmethod
    def namespaces(pid: int | str) -> dict[str, str]:
        return {n: os.readlink(f"/proc/{pid}/ns/{n}") for n in NS_KINDS}

    @staticmethod
    def cgroups(pid: int | str) -> dict[str, str]:
        """controller -> path, from /proc/<pid>/cgroup (v1 lines: id:controllers:path)."""
        out = {}
        with open(f"/proc/{pid}/cgroup") as f:
            for ln in f:
                _, ctrls, path = ln.rstrip("\n").split(":", 2)
                for c in ctrls.split(",") if ctrls else ["(v2)"]:
                    out[c] = path
        return out

    @staticmethod
    def root_tree(pid: int | str) -> list[str]:
        """Every path under the process's root, relative to it."""
        root = f"/proc/{pid}/root"
        out = []
        for d, dirs, files in os.walk(root):
            rel = os.path.relpath(d, root)
            out += [os.path.normpath(os.path.join(rel, n)) for n in dirs + files]
        return sorted(out)

    @staticmethod
    def threads(pid: int | str) -> dict[int, dict[str, str]]:
        out = {}
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                out[int(t)] = Probe.status(f"{pid}/task/{t}")
            except OSError:
                pass
        return out


@pytest.fixture
def probe():
    return Probe
