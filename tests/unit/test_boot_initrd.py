import pytest

from nodesvc.vmm.boot import layout as L
from nodesvc.vmm.boot.errors import InitrdLoadError
from nodesvc.vmm.boot.initrd import initrd_placement, load_initrd
from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.memory import GuestMemory

MiB, GiB = 1 << 20, 1 << 30


@pytest.fixture
def mem():
    m = GuestMemory(128 * MiB)
    yield m
    m.close()


def test_loaded_page_aligned_at_top_of_ram(mem, tmp_path):
    data = bytes(range(256)) * 40 + b"tail"         # 10244 bytes: not a page multiple
    p = tmp_path / "initrd.cpio"
    p.write_bytes(data)
    addr, size = load_initrd(mem, p, kernel_end=0x200000)
    assert size == len(data)
    assert addr % 4096 == 0
    assert addr + size <= 128 * MiB < addr + size + 4096
    assert mem.read(addr, size) == data


def test_respects_initrd_addr_max(mem):
    addr = initrd_placement(mem, 5000, kernel_end=0x200000, initrd_addr_max=0x37FFFFF)
    assert addr + 5000 <= 0x3800000 and addr % 4096 == 0 and addr > 0x3800000 - 3 * 4096


def test_large_memory_stays_below_gap():
    m = GuestMemory(4 * GiB + 64 * MiB)
    try:
        # Even a kernel allowing 4 GiB gets it just below the MMIO gap, never in or above it.
        addr = initrd_placement(m, 10 * MiB, kernel_end=0x2000000, initrd_addr_max=0xFFFFFFFF)
        assert addr == L.MMIO_GAP_START - 10 * MiB
        # The default ceiling (x86_64 kernels: 0x7fffffff) wins when lower.
        addr = initrd_placement(m, 10 * MiB, kernel_end=0x2000000)
        assert addr == 0x80000000 - 10 * MiB
    finally:
        m.close()


def test_does_not_overlap_kernel(mem):
    with pytest.raises(InitrdLoadError, match="does not fit"):
        initrd_placement(mem, 100 * MiB, kernel_end=30 * MiB)
    addr = initrd_placement(mem, 98 * MiB - 4096, kernel_end=30 * MiB)
    assert addr >= 30 * MiB


def test_errors_are_config_errors(mem, tmp_path):
    with pytest.raises(ConfigError, match="cannot open initrd"):
        load_initrd(mem, tmp_path / "missing", kernel_end=0x200000)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(InitrdLoadError, match="empty"):
        load_initrd(mem, empty, kernel_end=0x200000)
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(200 * MiB)                          # sparse: costs no disk
    with pytest.raises(InitrdLoadError, match=f"{big}.*does not fit"):
        load_initrd(mem, big, kernel_end=0x200000)
