"""Snapshots of running tiny guests on real KVM: pause, save, restore into a new MicroVm.

The `counter` guest prints `CPU <id> <n>` for n = 0..count-1 on every vCPU, keeping n in
guest RAM. The output before the snapshot plus the restored VM's output must be exactly
what one uninterrupted run prints: each vCPU's sequence continues with no value lost or
repeated, and a line cut by the pause is finished after the restore.
"""

import os
import re
import struct

import pytest

from nodesvc.vmm.config import config_from_flags
from nodesvc.vmm.console import CaptureSink
from nodesvc.vmm.exits import ExitReason
from nodesvc.vmm.snapshot import (SnapshotCorrupt, SnapshotMismatch, SnapshotVersionError,
                                  create_snapshot, restore_vm_from)
from nodesvc.vmm.snapshot import format as F
from nodesvc.vmm.vm import MicroVm

pytestmark = pytest.mark.kvm
COUNT = 60


def _files(d):
    return (os.open(d / "vm.state", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600),
            os.open(d / "vm.mem", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))


def _snapshot_mid_count(tiny_guest, d, *, vcpus=1, at=20):
    """Boot `counter`, pause once vCPU 0 printed `at`, snapshot, end the VM. Returns
    (output before the snapshot, state fd, memory fd, create_snapshot's figures)."""
    cfg = config_from_flags(kernel=str(tiny_guest("counter")), vcpus=vcpus, mem_mib=32,
                            boot_args=f"count={COUNT} delay=500 cpus={vcpus}")
    sink = CaptureSink()
    vm = MicroVm(cfg, vm_id="source", console_out=sink)
    try:
        vm.start()
        assert sink.wait_for(f"CPU 0 {at}\n".encode(), 30), sink.text()
        vm.pause()
        before = sink.text()
        state_fd, mem_fd = _files(d)
        info = create_snapshot(vm, state_fd, mem_fd)
        assert sink.text() == before        # nothing ran while paused and saved
    finally:
        vm.shutdown()
    return before, state_fd, mem_fd, info


def _restore_and_run(state_fd, mem_fd, **kw):
    sink = CaptureSink()
    vm = restore_vm_from(state_fd, mem_fd, console_out=sink, vm_id=kw.pop("vm_id", "restored"),
                         **kw)
    vm.start()
    if vm.wait(60) is None:
        vm.stop("timeout")
    return vm, vm.shutdown(), sink.text()


def _sequences(text, vcpus):
    lines = text.splitlines()
    return {c: [int(m.group(1)) for line in lines if (m := re.fullmatch(rf"CPU {c} (\d+)", line))]
            for c in range(vcpus)}


def test_count_continues_after_restore(tiny_guest, tmp_path):
    before, sfd, mfd, info = _snapshot_mid_count(tiny_guest, tmp_path)
    assert info["memory_bytes"] == 32 << 20 and info["state_bytes"] > F.HEADER_SIZE
    assert os.fstat(mfd).st_size == 32 << 20
    vm, result, after = _restore_and_run(sfd, mfd)
    assert result.reason is ExitReason.GUEST_RESET, result
    assert after and not after.startswith("COUNTER START")    # no second boot
    full = before + after
    assert _sequences(full, 1) == {0: list(range(COUNT))}
    assert full.splitlines()[-1] == "DONE"
    # it ran from the snapshot: no kernel was loaded, no boot data written
    assert "kernel" not in vm.phases and "boot-data" not in vm.phases
    assert "load-state" in vm.phases


def test_two_vcpus_both_resume(tiny_guest, tmp_path):
    before, sfd, mfd, _ = _snapshot_mid_count(tiny_guest, tmp_path, vcpus=2)
    seen = _sequences(before, 2)
    assert seen[1], "the AP had not started counting before the snapshot"
    vm, result, after = _restore_and_run(sfd, mfd)
    assert result.reason is ExitReason.GUEST_RESET, result
    assert _sequences(after, 2)[1], "the AP did not run after the restore"
    assert _sequences(before + after, 2) == {0: list(range(COUNT)), 1: list(range(COUNT))}
    assert (before + after).splitlines()[-1] == "DONE"


def test_clones_share_one_snapshot(tiny_guest, tmp_path):
    """Three VMs restored from the same files at once: each finishes the count on its
    own copy-on-write view of the memory file, which stays as it was."""
    before, sfd, mfd, _ = _snapshot_mid_count(tiny_guest, tmp_path)
    mem_before = os.pread(mfd, 32 << 20, 0)
    sinks, vms, results = [], [], []
    for i in range(3):
        sink = CaptureSink()
        vms.append(restore_vm_from(sfd, mfd, console_out=sink, vm_id=f"clone-{i}"))
        sinks.append(sink)
    for vm in vms:
        vm.start()
    for vm in vms:
        if vm.wait(60) is None:
            vm.stop("timeout")
        results.append(vm.shutdown())
    for sink, result in zip(sinks, results):
        assert result.reason is ExitReason.GUEST_RESET, result
        assert _sequences(before + sink.text(), 1) == {0: list(range(COUNT))}
    assert os.pread(mfd, 32 << 20, 0) == mem_before     # MAP_PRIVATE: the file is untouched


def _fd_count():
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def snapshot_files(tiny_guest, tmp_path):
    _, sfd, mfd, _ = _snapshot_mid_count(tiny_guest, tmp_path)
    return tmp_path, sfd, mfd


def _copy(fd, path, data=None):
    out = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.write(out, os.pread(fd, 64 << 20, 0) if data is None else data)
    return out


@pytest.mark.parametrize("damage,error,match", [
    (lambda b: b[:len(b) // 2], SnapshotCorrupt, "truncated"),
    (lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], SnapshotCorrupt, "sha256"),
    (lambda b: b[:8] + struct.pack("<H", F.FORMAT_MAJOR + 1) + b[10:], SnapshotVersionError,
     "format 2.0"),
    (lambda b: b"", SnapshotCorrupt, "not a nodesvc snapshot"),
])
def test_bad_state_files_are_refused_before_anything_starts(snapshot_files, damage, error, match):
    d, sfd, mfd = snapshot_files
    bad = _copy(sfd, d / "bad.state", damage(os.pread(sfd, 64 << 20, 0)))
    fds, threads = _fd_count(), len(__import__("threading").enumerate())
    with pytest.raises(error, match=match):
        restore_vm_from(bad, mfd)
    assert _fd_count() == fds       # no KVM VM, no vCPU, no mapping was left behind
    assert len(__import__("threading").enumerate()) == threads


def test_short_memory_file_is_refused(snapshot_files):
    d, sfd, mfd = snapshot_files
    short = _copy(mfd, d / "short.mem", os.pread(mfd, 16 << 20, 0))
    fds = _fd_count()
    with pytest.raises(SnapshotMismatch, match="memory file is too short"):
        restore_vm_from(sfd, short)
    assert _fd_count() == fds


def test_device_list_mismatch_closes_the_half_built_vm(snapshot_files, tiny_guest):
    """A state whose devices differ from the rebuilt machine's fails after KVM exists:
    everything it created is closed again."""
    d, sfd, mfd = snapshot_files
    state = F.read_fd(sfd)
    state["devices"].append({"kind": "serial", "id": "com2"})
    bad = _copy(sfd, d / "devs.state", F.encode(state))
    fds = _fd_count()
    with pytest.raises(SnapshotMismatch, match="devices"):
        restore_vm_from(bad, mfd)
    assert _fd_count() == fds


def test_snapshot_needs_a_paused_vm(tiny_guest, tmp_path):
    cfg = config_from_flags(kernel=str(tiny_guest("counter")), mem_mib=32,
                            boot_args="count=1000 delay=2000")
    vm = MicroVm(cfg, console_out=CaptureSink())
    try:
        vm.start()
        sfd, mfd = _files(tmp_path)
        with pytest.raises(Exception, match="must be paused"):
            create_snapshot(vm, sfd, mfd)
    finally:
        vm.shutdown()
