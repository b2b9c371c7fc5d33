import pytest

from nodesvc.vmm.boot import layout as L
from nodesvc.vmm.boot.abi import ffi, offsetof, pack, unpack
from nodesvc.vmm.boot.errors import BootError
from nodesvc.vmm.boot.zeropage import (
    CAN_USE_HEAP, LOADED_HIGH, SETUP_RNG_SEED, e820_map, read_boot_params, write_boot_params)
from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.memory import GuestMemory

MiB, GiB = 1 << 20, 1 << 30


@pytest.fixture
def mem128():
    m = GuestMemory(128 * MiB)
    yield m
    m.close()


@pytest.fixture
def mem_big():
    m = GuestMemory(4 * GiB + 256 * MiB)        # 3 GiB below the gap, 1.25 GiB above 4 GiB
    yield m
    m.close()


def test_layout_gap_matches_guest_memory():
    from nodesvc.vmm import memory
    assert (L.MMIO_GAP_START, L.MMIO_GAP_END) == (memory.MMIO_GAP_START, memory.MMIO_GAP_END)


def test_e820_128mib(mem128):
    assert e820_map(mem128) == [
        (0, 0x9FC00, L.E820_RAM),
        (0x9FC00, 0x100000 - 0x9FC00, L.E820_RESERVED),
        (0x100000, 128 * MiB - 0x100000, L.E820_RAM),
    ]


def test_e820_above_4g(mem_big):
    e = e820_map(mem_big)
    assert e[2] == (0x100000, 0xC0000000 - 0x100000, L.E820_RAM)
    assert e[3] == (1 << 32, 4 * GiB + 256 * MiB - 0xC0000000, L.E820_RAM)
    assert len(e) == 4
    ram = sum(size for _, size, kind in e if kind == L.E820_RAM)
    assert ram == mem_big.size - (0x100000 - 0x9FC00)      # all RAM but the reserved hole
    # nothing is declared inside the MMIO gap
    assert not any(a < L.MMIO_GAP_END and a + s > L.MMIO_GAP_START for a, s, _ in e)


def test_zero_page_fields(mem128):
    cmdline = b"console=ttyS0 reboot=k panic=1"
    write_boot_params(mem128, cmdline=cmdline, initrd=(0x7000000, 0x12345))
    bp = read_boot_params(mem128)
    h = bp.hdr
    assert h.boot_flag == 0xAA55
    assert mem128.read(L.ZERO_PAGE + offsetof("struct boot_params", "hdr", "header"), 4) == b"HdrS"
    assert h.type_of_loader == 0xFF
    assert h.kernel_alignment == 0x1000000
    assert h.loadflags & LOADED_HIGH and h.loadflags & CAN_USE_HEAP
    assert h.heap_end_ptr == 0xE000 - 0x200
    assert h.cmd_line_ptr == 0x20000 and h.cmdline_size == len(cmdline)
    assert mem128.read(0x20000, len(cmdline) + 1) == cmdline + b"\0"
    assert (h.ramdisk_image, h.ramdisk_size) == (0x7000000, 0x12345)
    assert (bp.ext_ramdisk_image, bp.ext_ramdisk_size) == (0, 0)
    assert h.setup_data == 0 and bp.sentinel == 0
    table = [(bp.e820_table[i].addr, bp.e820_table[i].size, bp.e820_table[i].type)
             for i in range(bp.e820_entries)]
    assert table == e820_map(mem128)


def test_ramdisk_above_4g_uses_ext_fields(mem_big):
    write_boot_params(mem_big, cmdline=b"", initrd=((1 << 32) + 0x2000, (1 << 32) + 5))
    bp = read_boot_params(mem_big)
    assert (bp.hdr.ramdisk_image, bp.ext_ramdisk_image) == (0x2000, 1)
    assert (bp.hdr.ramdisk_size, bp.ext_ramdisk_size) == (5, 1)
    assert bp.e820_entries == 4


def test_cmdline_limits(mem128):
    write_boot_params(mem128, cmdline=b"x" * 2047)            # 2047 + NUL = 2048 fits
    assert mem128.read(0x20000 + 2047, 1) == b"\0"
    with pytest.raises(BootError, match="2048 bytes; at most 2047"):
        write_boot_params(mem128, cmdline=b"x" * 2048)
    with pytest.raises(ConfigError, match="NUL"):
        write_boot_params(mem128, cmdline=b"a\0b")
    with pytest.raises(TypeError):
        write_boot_params(mem128, cmdline="console=ttyS0")


def _bz_header(version=0x020F, cmdline_size=255, setup_data=0) -> bytes:
    h = ffi.new("struct setup_header *", {
        "setup_sects": 27, "boot_flag": 0xAA55, "header": int.from_bytes(b"HdrS", "little"),
        "version": version, "loadflags": LOADED_HIGH, "xloadflags": 1,
        "initrd_addr_max": 0x7FFFFFFF, "cmdline_size": cmdline_size, "init_size": 0x123000,
        "setup_data": setup_data, "vid_mode": 0xFFFF, "relocatable_kernel": 1})
    return pack(h)


def test_starts_from_bzimage_setup_header(mem128):
    write_boot_params(mem128, cmdline=b"quiet", setup_header=_bz_header())
    h = read_boot_params(mem128).hdr
    assert (h.setup_sects, h.version, h.init_size, h.vid_mode) == (27, 0x020F, 0x123000, 0xFFFF)
    assert h.type_of_loader == 0xFF and h.cmd_line_ptr == 0x20000 and h.cmdline_size == 5
    assert h.code32_start == L.BZIMAGE_LOAD


def test_cmdline_longer_than_kernel_accepts(mem128):
    with pytest.raises(BootError, match="accepts at most 255"):
        write_boot_params(mem128, cmdline=b"y" * 256, setup_header=_bz_header(cmdline_size=255))


def test_rng_seed_setup_data(mem128):
    seed = bytes(range(64))
    write_boot_params(mem128, cmdline=b"", rng_seed=seed)
    bp = read_boot_params(mem128)
    assert bp.hdr.setup_data == L.SETUP_DATA == 0x21000
    node = unpack("struct setup_data", mem128.read(L.SETUP_DATA, 16))
    assert (node.next, node.type, node.len) == (0, SETUP_RNG_SEED, 64)
    assert mem128.read(L.SETUP_DATA + 16, 64) == seed
    # The seed sits in e820 RAM below the MP table, clear of cmdline and zero page.
    assert L.CMDLINE + L.CMDLINE_MAX <= L.SETUP_DATA
    assert L.SETUP_DATA + L.SETUP_DATA_MAX <= L.MPTABLE_START


def test_rng_seed_chains_existing_list_and_limits(mem128):
    write_boot_params(mem128, cmdline=b"", rng_seed=b"s" * 8,
                      setup_header=_bz_header(setup_data=0x30000))
    node = unpack("struct setup_data", mem128.read(L.SETUP_DATA, 16))
    assert node.next == 0x30000
    with pytest.raises(BootError, match="does not fit"):
        write_boot_params(mem128, cmdline=b"", rng_seed=bytes(4096))
    with pytest.raises(BootError, match="2.09"):
        write_boot_params(mem128, cmdline=b"", rng_seed=b"s", setup_header=_bz_header(0x0208))
    with pytest.raises(BootError, match="empty"):
        write_boot_params(mem128, cmdline=b"", rng_seed=b"")


def test_tiny_memory_refused():
    m = GuestMemory(1 * MiB)
    try:
        with pytest.raises(BootError, match="beyond 1 MiB"):
            e820_map(m)
    finally:
        m.close()
