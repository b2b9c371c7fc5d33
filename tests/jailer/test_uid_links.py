"""UidAllocator's by-VM links: O(1) lookups that stay correct beside older state dirs
(locks only) and half-finished allocations or releases."""

from __future__ import annotations

import os

from nodesvc_jailer.uids import UidAllocator


def test_links_pair_with_locks(tmp_path):
    tmp_path = tmp_path / "uids"
    a = UidAllocator(str(tmp_path), 2000, 2009)
    u = a.allocate("vm-a")
    assert os.readlink(tmp_path.parent / (tmp_path.name + ".by-vm") / "vm-a.vm") == str(u)
    assert (tmp_path / f"{u}.uid").read_text() == "vm-a"
    assert a.allocate("vm-a") == u and a.uid_of("vm-a") == u
    a.release("vm-a")
    assert sorted(os.listdir(tmp_path)) == [] and a.uid_of("vm-a") is None


def test_a_state_dir_of_locks_only_is_still_read(tmp_path):
    tmp_path = tmp_path / "uids"
    tmp_path.mkdir()
    (tmp_path / "2003.uid").write_text("old")      # an older node's lock, no link
    a = UidAllocator(str(tmp_path), 2000, 2009)
    assert a.uid_of("old") == 2003 and a.allocate("old") == 2003   # and now linked
    assert a.allocate("new") == 2004                               # after the highest
    a.release("old")
    assert not (tmp_path / "2003.uid").exists() and a.owned() == {2004: "new"}


def test_half_done_allocations_and_releases(tmp_path):
    tmp_path = tmp_path / "uids"
    a = UidAllocator(str(tmp_path), 2000, 2009)
    (tmp_path / "2005.uid").write_text("crashed")   # lock made, link not yet
    assert a.uid_of("crashed") == 2005
    os.symlink("2007", tmp_path.parent / (tmp_path.name + ".by-vm") / "ghost.vm")       # link left, its lock released
    assert a.uid_of("ghost") is None
    u = a.allocate("ghost")
    assert u != 2007 and a.uid_of("ghost") == u and a.owned()[u] == "ghost"
    a.release("crashed")
    assert a.owned() == {u: "ghost"}
