"""The snapshot state file: every way a file can be wrong is refused with its own error."""

import os
import struct

import pytest

from nodesvc.vmm.snapshot import format as F
from nodesvc.vmm.snapshot.restore import apply_overrides, config_from_state
from nodesvc.vmm.snapshot.cpu import serializable_msrs, MSR_IA32_TSC_DEADLINE

STATE = {"vm_id": "a", "vcpus": [{"index": 0}], "blob": "x" * 1000}


def test_round_trip():
    assert F.decode(F.encode(STATE)) == STATE


def test_round_trip_through_a_file(tmp_path):
    fd = os.open(tmp_path / "s", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"old contents that are longer than nothing" * 100)
    size = F.write_fd(fd, STATE)
    assert os.fstat(fd).st_size == size      # truncated first, not overlaid
    assert F.read_fd(fd) == STATE
    os.close(fd)


def test_not_a_snapshot():
    with pytest.raises(F.SnapshotCorrupt, match="not a nodesvc snapshot"):
        F.decode(b"{\"json\": true}" + bytes(100))
    with pytest.raises(F.SnapshotCorrupt, match="not a nodesvc snapshot"):
        F.decode(b"")


@pytest.mark.parametrize("cut", [10, F.HEADER_SIZE - 1, F.HEADER_SIZE, F.HEADER_SIZE + 50])
def test_truncated(cut):
    data = F.encode(STATE)
    with pytest.raises(F.SnapshotCorrupt, match="truncated"):
        F.decode(data[:cut])


def test_flipped_bit_fails_the_checksum():
    data = bytearray(F.encode(STATE))
    data[F.HEADER_SIZE + 200] ^= 0x04
    with pytest.raises(F.SnapshotCorrupt, match="sha256"):
        F.decode(bytes(data))


def test_trailing_bytes_are_refused():
    with pytest.raises(F.SnapshotCorrupt, match="after its body"):
        F.decode(F.encode(STATE) + b"\0")


def _with_version(data: bytes, major: int, minor: int) -> bytes:
    return data[:8] + struct.pack("<HH", major, minor) + data[12:]


@pytest.mark.parametrize("major,minor", [(F.FORMAT_MAJOR + 1, 0), (0, 9),
                                         (F.FORMAT_MAJOR, F.FORMAT_MINOR + 1)])
def test_other_versions_are_refused(major, minor):
    data = _with_version(F.encode(STATE), major, minor)
    with pytest.raises(F.SnapshotVersionError, match=f"format {major}.{minor}"):
        F.decode(data)


def test_other_architecture_is_refused():
    data = F.encode(STATE)
    data = data[:12] + struct.pack("<I", 0xAA64) + data[16:]
    with pytest.raises(F.SnapshotVersionError, match="architecture"):
        F.decode(data)


def test_msr_selection_keeps_firecrackers_ranges_and_puts_the_deadline_last():
    reported = [0x10, 0x17B, MSR_IA32_TSC_DEADLINE, 0x1B, 0xC0000080, 0x4B564D01, 0x3A, 0x277]
    got = serializable_msrs(reported)
    assert got[-1] == MSR_IA32_TSC_DEADLINE
    assert 0x17B not in got and 0x3A not in got     # MCG_CTL and FEATURE_CONTROL stay out
    assert set(got) == {0x10, 0x1B, 0xC0000080, 0x4B564D01, 0x277, MSR_IA32_TSC_DEADLINE}


DEVICES = [{"kind": "virtio-net", "config": {"iface_id": "eth0", "host_dev_name": "tap0"}},
           {"kind": "vsock", "config": {"guest_cid": 3, "uds_path": "/run/v.sock"}}]


def test_overrides_for_a_clone():
    out = apply_overrides(DEVICES, {
        "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap7",
                               "guest_mac": "06:00:00:00:00:07"}],
        "vsock_override": {"uds_path": "/run/clone.sock"}})
    assert out[0]["config"] == {"iface_id": "eth0", "host_dev_name": "tap7",
                                "guest_mac": "06:00:00:00:00:07"}
    assert out[1]["config"]["uds_path"] == "/run/clone.sock"
    assert DEVICES[0]["config"]["host_dev_name"] == "tap0"     # the snapshot's is untouched


def test_override_of_an_unknown_interface_is_an_error():
    with pytest.raises(F.SnapshotError, match="no such interface.*eth0"):
        apply_overrides(DEVICES, {"network_overrides": [{"iface_id": "eth9",
                                                         "host_dev_name": "t"}]})
    with pytest.raises(F.SnapshotError, match="unknown restore override"):
        apply_overrides(DEVICES, {"balloon": {}})


def test_config_must_agree_with_the_saved_state():
    state = {"config": {"machine": {"vcpu_count": 2, "mem_size_mib": 32}, "devices": []},
             "memory": {"size": 32 << 20}, "vcpus": [{}]}
    with pytest.raises(F.SnapshotMismatch, match="2 vCPUs and 1 saved"):
        config_from_state(state)
