import pytest

from nodesvc.vmm.errors import GuestMemoryError
from nodesvc.vmm.memory import MMIO_GAP_END, MMIO_GAP_START, GuestMemory, layout


def test_layout_small_is_one_region():
    assert layout(128 << 20) == [(0, 128 << 20)]


def test_layout_large_splits_around_mmio_gap():
    size = 4 << 30
    assert layout(size) == [(0, MMIO_GAP_START), (MMIO_GAP_END, size - MMIO_GAP_START)]


def test_read_write_roundtrip_and_typed_access():
    mem = GuestMemory(2 << 20)
    try:
        mem.write(0x1000, b"hello")
        assert mem.read(0x1000, 5) == b"hello"
        mem.write_u32(0x2000, 0xDEADBEEF)
        assert mem.read_u32(0x2000) == 0xDEADBEEF
        assert mem.read_u16(0x2000) == 0xBEEF
        mem.write_u64(0x3000, 1 << 63)
        assert mem.read_u64(0x3000) == 1 << 63
        assert mem.read(0x3000, 8) == (1 << 63).to_bytes(8, "little")
    finally:
        mem.close()


@pytest.mark.parametrize("gpa,length", [(2 << 20, 1), ((2 << 20) - 4, 8), (-1, 1), (0, (2 << 20) + 1)])
def test_out_of_bounds_is_refused(gpa, length):
    mem = GuestMemory(2 << 20)
    try:
        with pytest.raises(GuestMemoryError):
            mem.read(gpa, length)
        with pytest.raises(GuestMemoryError):
            mem.write(gpa, b"\0" * max(length, 0))
        assert not mem.contains(gpa, length)
    finally:
        mem.close()


def test_last_byte_is_reachable():
    mem = GuestMemory(1 << 20)
    try:
        mem.write((1 << 20) - 1, b"\x7f")
        assert mem.read_u8((1 << 20) - 1) == 0x7F
    finally:
        mem.close()


def test_large_guest_gap_is_not_memory():
    mem = GuestMemory(3 << 30 | 256 << 20)  # 3.25 GiB: 256 MiB land above 4 GiB
    try:
        assert [r.guest_addr for r in mem.regions] == [0, MMIO_GAP_END]
        assert not mem.contains(MMIO_GAP_START)
        mem.write(MMIO_GAP_END, b"x")
        assert mem.read(MMIO_GAP_END, 1) == b"x"
        with pytest.raises(GuestMemoryError):
            mem.read(MMIO_GAP_START - 2, 4)  # straddles the gap
        # MAP_NORESERVE: nothing is resident until touched
        assert mem.resident_bytes() <= 2 * 4096
    finally:
        mem.close()


def test_size_must_be_page_multiple():
    with pytest.raises(GuestMemoryError):
        GuestMemory(4097)
