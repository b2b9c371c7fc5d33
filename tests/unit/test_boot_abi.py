"""Struct layouts of nodesvc.vmm.boot.abi against the documented ABI.

Expected offsets are the ones written in Documentation/arch/x86/boot.rst,
zero-page.rst / the comments of bootparam.h, the Intel MP spec 1.4 and the ELF-64
gABI. When gcc and the kernel UAPI headers are installed, every field is also
compared with what the C compiler computes from the real headers.
"""

import os
import shutil
import subprocess

import pytest

from nodesvc.vmm.boot.abi import ffi, offsetof, pack, sizeof, unpack

# boot.rst "The Real-Mode Kernel Header" table: offset within the zero page.
SETUP_HEADER_DOC = {
    "setup_sects": 0x1F1, "root_flags": 0x1F2, "syssize": 0x1F4, "ram_size": 0x1F8,
    "vid_mode": 0x1FA, "root_dev": 0x1FC, "boot_flag": 0x1FE, "jump": 0x200,
    "header": 0x202, "version": 0x206, "realmode_swtch": 0x208, "start_sys_seg": 0x20C,
    "kernel_version": 0x20E, "type_of_loader": 0x210, "loadflags": 0x211,
    "setup_move_size": 0x212, "code32_start": 0x214, "ramdisk_image": 0x218,
    "ramdisk_size": 0x21C, "bootsect_kludge": 0x220, "heap_end_ptr": 0x224,
    "ext_loader_ver": 0x226, "ext_loader_type": 0x227, "cmd_line_ptr": 0x228,
    "initrd_addr_max": 0x22C, "kernel_alignment": 0x230, "relocatable_kernel": 0x234,
    "min_alignment": 0x235, "xloadflags": 0x236, "cmdline_size": 0x238,
    "hardware_subarch": 0x23C, "hardware_subarch_data": 0x240, "payload_offset": 0x248,
    "payload_length": 0x24C, "setup_data": 0x250, "pref_address": 0x258,
    "init_size": 0x260, "handover_offset": 0x264, "kernel_info_offset": 0x268,
}

# bootparam.h comments on struct boot_params (== zero-page.rst).
BOOT_PARAMS_DOC = {
    "screen_info": 0x000, "apm_bios_info": 0x040, "_pad2": 0x054, "tboot_addr": 0x058,
    "ist_info": 0x060, "acpi_rsdp_addr": 0x070, "_pad3": 0x078, "hd0_info": 0x080,
    "hd1_info": 0x090, "sys_desc_table": 0x0A0, "olpc_ofw_header": 0x0B0,
    "ext_ramdisk_image": 0x0C0, "ext_ramdisk_size": 0x0C4, "ext_cmd_line_ptr": 0x0C8,
    "_pad4": 0x0CC, "edid_info": 0x140, "efi_info": 0x1C0, "alt_mem_k": 0x1E0,
    "scratch": 0x1E4, "e820_entries": 0x1E8, "eddbuf_entries": 0x1E9,
    "edd_mbr_sig_buf_entries": 0x1EA, "kbd_status": 0x1EB, "secure_boot": 0x1EC,
    "_pad5": 0x1ED, "sentinel": 0x1EF, "_pad6": 0x1F0, "hdr": 0x1F1,
    "edd_mbr_sig_buffer": 0x290, "e820_table": 0x2D0, "_pad8": 0xCD0, "eddbuf": 0xD00,
    "_pad9": 0xEEC,
}


def test_boot_params_is_one_page():
    assert sizeof("struct boot_params") == 4096


@pytest.mark.parametrize("field,offset", sorted(BOOT_PARAMS_DOC.items(), key=lambda kv: kv[1]))
def test_boot_params_offsets(field, offset):
    assert offsetof("struct boot_params", field) == offset


@pytest.mark.parametrize("field,offset", sorted(SETUP_HEADER_DOC.items(), key=lambda kv: kv[1]))
def test_setup_header_offsets(field, offset):
    assert offsetof("struct boot_params", "hdr", field) == offset


def test_small_struct_sizes():
    # boot.rst: setup_header "is currently 119 bytes long" (+4 for kernel_info_offset
    # from its 0x1f1 start: 0x26c - 0x1f1 = 123).
    assert sizeof("struct setup_header") == 0x26C - 0x1F1
    assert sizeof("struct boot_e820_entry") == 20          # packed u64,u64,u32
    assert offsetof("struct boot_e820_entry", "type") == 16
    assert sizeof("struct setup_data") == 16               # data[] follows at 16
    assert sizeof("struct screen_info") == 0x40
    assert sizeof("struct edd_info") == 8 + 74             # EDDEXTSIZE + EDDPARMSIZE
    assert sizeof("struct edid_info") == 128


def test_mp_spec_sizes():
    # Intel MP spec 1.4, tables 4-1 .. 4-10.
    assert sizeof("struct mpf_intel") == 16
    assert sizeof("struct mpc_table") == 44
    assert sizeof("struct mpc_cpu") == 20
    for t in ("mpc_bus", "mpc_ioapic", "mpc_intsrc", "mpc_lintsrc"):
        assert sizeof(f"struct {t}") == 8
    assert offsetof("struct mpc_table", "lapic") == 0x24
    assert offsetof("struct mpc_table", "oemcount") == 0x22
    assert offsetof("struct mpc_ioapic", "apicaddr") == 4


def test_elf_sizes():
    assert sizeof("Elf64_Ehdr") == 64 and sizeof("Elf64_Phdr") == 56
    assert sizeof("Elf64_Nhdr") == 12
    assert offsetof("Elf64_Ehdr", "e_entry") == 0x18
    assert offsetof("Elf64_Ehdr", "e_phnum") == 0x38
    assert offsetof("Elf64_Phdr", "p_paddr") == 0x18


def test_pack_unpack_roundtrip():
    e = ffi.new("struct boot_e820_entry *", {"addr": 0x100000, "size": 0x7f00000, "type": 1})
    raw = pack(e)
    assert len(raw) == 20
    back = unpack("struct boot_e820_entry", b"xx" + raw, 2)
    assert (back.addr, back.size, back.type) == (0x100000, 0x7F00000, 1)
    with pytest.raises(ValueError):
        unpack("struct boot_e820_entry", raw[:-1])


# -- cross-check with the C compiler and the installed UAPI headers --------------
def _fields(ctype):
    return [name for name, _ in ffi.typeof(ctype).fields]


_CHECKS = {
    "asm/bootparam.h": ["struct boot_params", "struct setup_header", "struct boot_e820_entry",
                        "struct setup_data", "struct screen_info", "struct edd_info",
                        "struct apm_bios_info", "struct efi_info"],
    "elf.h": ["Elf64_Ehdr", "Elf64_Phdr", "Elf64_Nhdr"],
}


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_layouts_match_gcc_and_system_headers(tmp_path):
    lines = ["#include <stdio.h>", "#include <stddef.h>"]
    lines += [f"#include <{h}>" for h in _CHECKS]
    lines.append("int main(void) {")
    expected = {}
    for ctype in sum(_CHECKS.values(), []):
        lines.append(f'printf("sizeof({ctype}) %zu\\n", sizeof({ctype}));')
        expected[f"sizeof({ctype})"] = sizeof(ctype)
        for f in _fields(ctype):
            if f.startswith("_"):       # padding/reserved: names vary between versions
                continue
            lines.append(f'printf("{ctype}.{f} %zu\\n", offsetof({ctype}, {f}));')
            expected[f"{ctype}.{f}"] = offsetof(ctype, f)
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    build = subprocess.run(["gcc", "-o", str(exe), str(src)], capture_output=True, text=True)
    if build.returncode != 0:
        if "No such file" in build.stderr:
            pytest.skip("kernel UAPI headers (linux-libc-dev) not installed")
        pytest.fail(build.stderr)
    out = subprocess.check_output([str(exe)], text=True).splitlines()
    got = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in out}
    assert got == expected
    assert os.path.getsize(exe) > 0
