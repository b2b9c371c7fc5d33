"""Cgroup.attach on the host's real hierarchy: a single-threaded caller moves itself with
a v1 `tasks` write (no wait on the cgroup_threadgroup_rwsem), a multi-threaded one with
cgroup.procs; either way every thread, and every process forked afterwards, is inside."""

from __future__ import annotations

import json
import os
import threading

import pytest

from nodesvc_jailer import cgroup as cg


def _v1_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("not root (cgroups need it)")
    try:
        if cg.detect_version() != 1:
            pytest.skip("host cgroups are v2 (this path is v1's)")
    except cg.CgroupError:
        pytest.skip("no cgroup hierarchy mounted")


def _cgroups(path: str) -> dict[str, str]:
    out = {}
    for line in open(path).read().splitlines():
        _, ctrls, where = line.split(":", 2)
        for c in ctrls.split(","):
            out[c] = where
    return out


def _attach_in_child(group: cg.Cgroup, extra_thread: bool) -> dict:
    """Fork; the child (optionally with a second live thread) attaches itself, forks a
    grandchild, and reports every thread's and the grandchild's cgroups."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            stop = threading.Event()
            t = threading.Thread(target=stop.wait) if extra_thread else None
            if t:
                t.start()
            group.attach()
            tasks = {tid: _cgroups(f"/proc/self/task/{tid}/cgroup")
                     for tid in os.listdir("/proc/self/task")}
            hold_r, hold_w = os.pipe()
            g = os.fork()
            if g == 0:      # waits until looked at
                os.close(hold_w)
                os.read(hold_r, 1)
                os._exit(0)
            forked = _cgroups(f"/proc/{g}/cgroup")
            os.close(hold_w)
            os.waitpid(g, 0)
            stop.set()
            if t:
                t.join()
            os.write(w, json.dumps({"tasks": tasks, "forked": forked}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)


@pytest.mark.parametrize("extra_thread", [False, True], ids=["one-thread", "two-threads"])
def test_attach_moves_every_thread_and_later_forks(extra_thread):
    _v1_or_skip()
    vm_id = f"attach-{os.getpid()}-{int(extra_thread)}"
    group = cg.Cgroup(1, vm_id, "nodesvc-attach-test")
    try:
        group.create(cg.Limits(memory_bytes=256 << 20, cpus=1.0, pids=16).properties(1))
        got = _attach_in_child(group, extra_thread)
        want = f"/nodesvc-attach-test/{vm_id}"
        assert len(got["tasks"]) == (2 if extra_thread else 1)
        for where in [*got["tasks"].values(), got["forked"]]:
            for c in ("memory", "cpu", "pids"):
                assert where[c] == want, (c, where)
    finally:
        assert group.remove()
        for m in ("memory", "cpu", "pids"):
            try:
                os.rmdir(os.path.join(group._v1_mount(m), "nodesvc-attach-test"))
            except OSError:
                pass
