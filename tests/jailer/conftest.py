"""Real jails: root, namespaces, cgroups (v1 on our hosts), seccomp. Marker: `jail`.

`jailed(jail, body)` forks like the future zygote: the child enters the jail (the "exit"
PID-namespace mode, so the VMM-to-be is re-parented to this test process, a subreaper
while the fixture is active) and runs `body(out)` jailed, `out` being a write-only fd for
results. The parent gets a `Jailed` with the jailed pid (host view), the results, and
its exit status once reaped.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import shutil
import signal

import pytest

from nodesvc_jailer import Jail, Limits, cgroup as cg, linux as L, seccomp
from nodesvc_jailer.cleanup import sweep

_ids = itertools.count()


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "not root (namespaces, cgroups and mknod need it)"
    try:
        cg.detect_version()
    except cg.CgroupError:
        return "no cgroup hierarchy mounted"
    return None


class Jailed:
    def __init__(self, pid: int, out_r: int, go_w: int):
        self.pid, self._out, self._go = pid, out_r, go_w
        self.status: int | None = None

    def result(self, timeout: float = 10.0) -> dict:
        """The next JSON line the jailed body wrote."""
        buf = b""
        while not buf.endswith(b"\n"):
            r, _, _ = select.select([self._out], [], [], timeout)
            if not r:
                raise TimeoutError("the jailed process wrote nothing")
            chunk = os.read(self._out, 65536)
            if not chunk:
                raise EOFError(f"the jailed process ended without a result "
                               f"(status {self.wait()})")
            buf += chunk
        return json.loads(buf)

    def go(self) -> None:
        os.write(self._go, b"g")

    def wait(self) -> int:
        """Exit code (negative: killed by that signal), reaping the re-parented VMM."""
        if self.status is None:
            _, st = os.waitpid(self.pid, 0)
            self.status = os.waitstatus_to_exitcode(st)
        return self.status

    def close(self) -> None:
        for fd in (self._out, self._go):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def jail_env(tmp_path):
    why = _missing()
    if why:
        pytest.skip(why)
    seccomp.precompile()
    parent = f"nodesvc-test-{os.getpid()}"
    env = {"base_dir": str(tmp_path / "jails"), "uid_state_dir": str(tmp_path / "uids"),
           "parent_cgroup": parent}
    L.prctl(L.PR_SET_CHILD_SUBREAPER, 1)
    started: list[Jailed] = []

    def make(body, **kw) -> Jailed:
        opts = dict(env, **kw)
        vm_id = opts.pop("vm_id", f"t{os.getpid()}-{next(_ids)}")
        opts.setdefault("limits", Limits(memory_bytes=128 << 20, cpus=0.5, pids=8))
        out_r, out_w = os.pipe()
        go_r, go_w = os.pipe()
        pid_r, pid_w = os.pipe()
        mid = os.fork()
        if mid == 0:    # the zygote's child
            try:
                os.close(out_r), os.close(go_w), os.close(pid_r)
                Jail(vm_id, pid_fd=pid_w, keep_fds=(out_w, go_r), **opts).enter()
                body(out_w, go_r)
                os._exit(0)
            except BaseException as e:
                try:
                    os.write(out_w, (json.dumps({"error": f"{type(e).__name__}: {e}"})
                                     + "\n").encode())
                finally:
                    os._exit(3)
        os.close(out_w), os.close(go_r), os.close(pid_w)
        _, st = os.waitpid(mid, 0)
        pid_text = os.read(pid_r, 64)
        os.close(pid_r)
        if not pid_text:
            j = Jailed(mid, out_r, go_w)
            j.status = os.waitstatus_to_exitcode(st)
            j.vm_id, j.jail = vm_id, Jail(vm_id, **opts)
            started.append(j)
            return j
        j = Jailed(int(pid_text), out_r, go_w)
        j.vm_id, j.jail = vm_id, Jail(vm_id, **opts)
        started.append(j)
        return j

    yield make
    for j in started:
        if j.status is None:
            try:
                os.kill(j.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            j.wait()
        j.close()
    L.prctl(L.PR_SET_CHILD_SUBREAPER, 0)
    sweep(env["base_dir"], live=set(), uid_state_dir=env["uid_state_dir"],
          parent_cgroup=parent)
    for _, d, opts in cg.read_mounts():
        p = os.path.join(d, parent)
        if os.path.isdir(p):
            os.rmdir(p)
    shutil.rmtree(tmp_path, ignore_errors=True)


def report(out: int, **kv) -> None:
    os.write(out, (json.dumps(kv) + "\n").encode())


def hold(go: int) -> None:
    os.read(go, 1)
