"""Everything a jail made is gone after its VMM dies (SIGKILL included), and sweeps."""

from __future__ import annotations

import os
import signal

import pytest

from nodesvc_jailer import cgroup as cg
from nodesvc_jailer.cleanup import cleanup, known_jails, sweep
from nodesvc_jailer.uids import UidAllocator
from tests.jailer.conftest import hold, report

pytestmark = pytest.mark.jail


def _hold(out, go):
    report(out, ready=True)
    hold(go)


def _traces(j) -> dict:
    group = j.jail.cgroup()
    return {"dir": os.path.exists(j.jail.jail_dir), "cgroups": group.existing_dirs(),
            "uid": UidAllocator(j.jail.uid_state_dir).uid_of(j.vm_id)}


def test_sigkill_then_cleanup_leaves_nothing(jail_env):
    j = jail_env(_hold)
    j.result()
    before = _traces(j)
    assert before["dir"] and before["cgroups"] and before["uid"] is not None
    os.kill(j.pid, signal.SIGKILL)
    assert j.wait() == -signal.SIGKILL
    assert j.jail.cleanup() == {}
    assert _traces(j) == {"dir": False, "cgroups": [], "uid": None}
    assert j.jail.cleanup() == {}       # idempotent


def test_cleanup_of_a_live_jail_kills_it_first(jail_env):
    j = jail_env(_hold)
    j.result()
    assert cleanup(j.vm_id, j.jail.base_dir) == {}
    assert j.wait() == -signal.SIGKILL
    assert _traces(j) == {"dir": False, "cgroups": [], "uid": None}


def test_sweep_removes_the_dead_and_spares_the_living(jail_env):
    alive, dead = jail_env(_hold), jail_env(_hold)
    alive.result(), dead.result()
    os.kill(dead.pid, signal.SIGKILL)
    dead.wait()
    env = dict(uid_state_dir=alive.jail.uid_state_dir, parent_cgroup=alive.jail.parent_cgroup)
    assert known_jails(alive.jail.base_dir, **env) == {alive.vm_id, dead.vm_id}
    assert sweep(alive.jail.base_dir, **env) == [dead.vm_id]
    assert _traces(dead) == {"dir": False, "cgroups": [], "uid": None}
    assert _traces(alive)["dir"] and alive.jail.cgroup().pids() == {alive.pid}
    # a node that knows its live VMs says so; everything else goes
    assert sweep(alive.jail.base_dir, live={alive.vm_id}, **env) == []
    alive.go()
    assert alive.wait() == 0
    assert sweep(alive.jail.base_dir, **env) == [alive.vm_id]
    assert known_jails(alive.jail.base_dir, **env) == set()


def test_uids_of_live_jails_are_distinct(jail_env):
    js = [jail_env(_hold) for _ in range(3)]
    for j in js:
        j.result()      # jailed by now
    uids = {int(open(f"/proc/{j.pid}/status").read().split("Uid:")[1].split()[0]) for j in js}
    assert len(uids) == 3
    assert uids == set(UidAllocator(js[0].jail.uid_state_dir).owned())


def test_leftovers_of_a_half_made_jail_are_swept(jail_env, tmp_path):
    """A jail that died half-way (record and cgroup made, never entered) is swept too."""
    j = jail_env(_hold)
    j.result()
    os.kill(j.pid, signal.SIGKILL)
    j.wait()
    os.unlink(os.path.join(j.jail.jail_dir, "jail.json"))   # record lost
    assert sweep(j.jail.base_dir, uid_state_dir=j.jail.uid_state_dir,
                 parent_cgroup=j.jail.parent_cgroup) == [j.vm_id]
    assert _traces(j) == {"dir": False, "cgroups": [], "uid": None}
    assert cg.Cgroup(cg.detect_version(), j.vm_id, j.jail.parent_cgroup).existing_dirs() == []
