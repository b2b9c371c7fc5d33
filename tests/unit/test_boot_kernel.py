import os
import shutil
import subprocess

import pytest

from nodesvc.vmm.boot import layout as L
from nodesvc.vmm.boot.abi import ffi, pack
from nodesvc.vmm.boot.errors import KernelLoadError
from nodesvc.vmm.boot.kernel import detect_kernel_format, load_kernel
from nodesvc.vmm.boot.zeropage import read_boot_params, write_boot_params
from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.memory import GuestMemory

MiB = 1 << 20


@pytest.fixture
def mem():
    m = GuestMemory(128 * MiB)
    yield m
    m.close()


# -- crafted ELF files ------------------------------------------------------------
def make_elf(segments, entry, *, machine=62, etype=2, elf_class=2, notes=None, note_align=4):
    """segments: [(paddr, vaddr, data, memsz)]; notes: raw PT_NOTE payload."""
    phnum = len(segments) + (1 if notes is not None else 0)
    ehsize, phsize = ffi.sizeof("Elf64_Ehdr"), ffi.sizeof("Elf64_Phdr")
    offset = ehsize + phnum * phsize
    phdrs, blobs = [], b""
    for paddr, vaddr, data, memsz in segments:
        phdrs.append(ffi.new("Elf64_Phdr *", {
            "p_type": 1, "p_offset": offset + len(blobs), "p_vaddr": vaddr, "p_paddr": paddr,
            "p_filesz": len(data), "p_memsz": memsz, "p_align": 0x1000}))
        blobs += data
    if notes is not None:
        phdrs.append(ffi.new("Elf64_Phdr *", {
            "p_type": 4, "p_offset": offset + len(blobs), "p_filesz": len(notes),
            "p_memsz": len(notes), "p_align": note_align}))
        blobs += notes
    eh = ffi.new("Elf64_Ehdr *", {
        "e_ident": list(b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)),
        "e_type": etype, "e_machine": machine, "e_version": 1, "e_entry": entry,
        "e_phoff": ehsize, "e_ehsize": ehsize, "e_phentsize": phsize, "e_phnum": phnum})
    return pack(eh) + b"".join(pack(p) for p in phdrs) + blobs


def note(name: bytes, ntype: int, desc: bytes, align=4) -> bytes:
    pad = lambda b: b + bytes(-len(b) % align)  # noqa: E731
    nh = ffi.new("Elf64_Nhdr *",
                 {"n_namesz": len(name) + 1, "n_descsz": len(desc), "n_type": ntype})
    return pack(nh) + pad(name + b"\0") + pad(desc)


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_elf_segments_loaded_and_bss_zeroed(mem, tmp_path):
    mem.write(0x200000, b"\xff" * 0x3000)
    text, data = b"\x90" * 100 + b"\xf4", b"DATA" * 4
    p = write(tmp_path, "k.elf", make_elf(
        [(0x200000, 0x200000, text, len(text)), (0x201000, 0x201000, data, 0x2000)],
        entry=0x200064,
        notes=note(b"GNU", 3, b"build-id") + note(b"Xen", 18, (0x200010).to_bytes(4, "little"))))
    assert detect_kernel_format(p) == "elf"
    k = load_kernel(mem, p)
    assert (k.kind, k.entry, k.setup_header) == ("elf", 0x200064, None)
    assert (k.load_start, k.load_end, k.pvh_entry) == (0x200000, 0x203000, 0x200010)
    assert mem.read(0x200000, len(text)) == text
    assert mem.read(0x201000, 16) == data
    assert mem.read(0x201010, 0x2000 - 16) == bytes(0x2000 - 16)       # .bss cleared


def test_virtual_entry_translated_and_8_byte_pvh_note(mem, tmp_path):
    vbase = 0xFFFFFFFF81000000
    p = write(tmp_path, "v.elf", make_elf(
        [(0x1000000, vbase, b"\xf4" * 64, 0x1000)], entry=vbase + 0x20,
        notes=note(b"Xen", 18, (0x1000030).to_bytes(8, "little"), align=8), note_align=8))
    k = load_kernel(mem, p)
    assert k.entry == 0x1000020 and k.pvh_entry == 0x1000030


@pytest.mark.parametrize("kwargs,match", [
    (dict(machine=3), "not x86_64"),
    (dict(etype=3), "not ET_EXEC"),
    (dict(elf_class=1), "not a 64-bit ELF"),
])
def test_elf_header_refused(mem, tmp_path, kwargs, match):
    p = write(tmp_path, "bad.elf", make_elf([(0x200000, 0x200000, b"\xf4", 1)], 0x200000, **kwargs))
    with pytest.raises(KernelLoadError, match=match):
        load_kernel(mem, p)


@pytest.mark.parametrize("segments,entry,match", [
    ([(0x80000, 0x80000, b"\xf4", 1)], 0x80000, "below 1 MiB"),
    ([(200 * MiB, 200 * MiB, b"\xf4", 1)], 200 * MiB, "outside guest RAM"),
    ([(128 * MiB - 4096, 128 * MiB - 4096, b"\xf4", 8192)], 128 * MiB - 4096, "outside guest RAM"),
    ([(0x200000, 0x200000, b"\xf4", 1)], 0x300000, "entry point 0x300000 is outside"),
    ([(0x200000, 0x200000, b"\xf4", 1)], 0xFFFFFFFF81000000, "virtual entry point"),
    ([], 0x200000, "no usable program headers"),
])
def test_bad_segments_refused(mem, tmp_path, segments, entry, match):
    p = write(tmp_path, "bad.elf", make_elf(segments, entry))
    with pytest.raises(KernelLoadError, match=match) as exc:
        load_kernel(mem, p)
    assert str(p) in str(exc.value)
    assert isinstance(exc.value, ConfigError)


def test_refused_image_leaves_memory_untouched(mem, tmp_path):
    mem.write(0x200000, b"canary")
    p = write(tmp_path, "half.elf", make_elf(
        [(0x200000, 0x200000, b"\xf4" * 16, 16), (200 * MiB, 200 * MiB, b"\xf4", 1)], 0x200000))
    with pytest.raises(KernelLoadError, match="outside guest RAM"):
        load_kernel(mem, p)
    assert mem.read(0x200000, 6) == b"canary"
    notes_only = write(tmp_path, "notes.elf", make_elf([], 0x200000, notes=note(b"GNU", 1, b"")))
    with pytest.raises(KernelLoadError, match="no PT_LOAD"):
        load_kernel(mem, notes_only)


def test_truncated_elf_refused(mem, tmp_path):
    raw = make_elf([(0x200000, 0x200000, b"\xf4" * 64, 64)], 0x200000)
    with pytest.raises(KernelLoadError, match="past the end of the file"):
        load_kernel(mem, write(tmp_path, "t1.elf", raw[:-10]))
    with pytest.raises(KernelLoadError, match="truncated ELF"):
        load_kernel(mem, write(tmp_path, "t2.elf", raw[:70]))


# -- an ELF built by gcc --------------------------------------------------------
GUEST_C = r"""
asm(".pushsection .note.Xen, \"a\", @note\n.balign 4\n"
    ".long 4, 4, 18\n.asciz \"Xen\"\n.long pvh_start\n.popsection");
int counter = 0x11223344;
int zeroed[1024];
void pvh_start(void) { for (;;) asm volatile("hlt"); }
void _start(void) { zeroed[3] = ++counter; for (;;) asm volatile("hlt"); }
"""


def gcc_elf(tmp_path, link_flag):
    if shutil.which("gcc") is None or shutil.which("nm") is None:
        pytest.skip("gcc/binutils not installed")
    src, out = tmp_path / "g.c", tmp_path / "g.elf"
    src.write_text(GUEST_C)
    subprocess.run(["gcc", "-nostdlib", "-static", "-no-pie", "-fno-pic", "-ffreestanding",
                    "-fno-asynchronous-unwind-tables", "-Wl,--build-id=none", link_flag,
                    "-o", str(out), str(src)], check=True, capture_output=True)
    syms = {}
    for line in subprocess.check_output(["nm", str(out)], text=True).splitlines():
        addr, _, name = line.split()
        syms[name] = int(addr, 16)
    return out, syms


def test_gcc_built_elf(mem, tmp_path):
    path, syms = gcc_elf(tmp_path, "-Wl,-Ttext-segment=0x100000")
    mem.write(syms["zeroed"], b"\xee" * 4096)
    k = load_kernel(mem, path)
    assert k.kind == "elf" and k.entry == syms["_start"] and k.pvh_entry == syms["pvh_start"]
    assert k.load_start == 0x100000 and k.load_end >= syms["zeroed"] + 4096
    assert mem.read(syms["counter"], 4) == (0x11223344).to_bytes(4, "little")
    assert mem.read(syms["zeroed"], 4096) == bytes(4096)


def test_gcc_elf_with_headers_below_1mib_refused(mem, tmp_path):
    # With plain -Ttext=0x100000, ld puts the ELF headers' segment at 0xff000.
    path, _ = gcc_elf(tmp_path, "-Wl,-Ttext=0x100000")
    with pytest.raises(KernelLoadError, match=r"PT_LOAD \[0xff000.*below 1 MiB"):
        load_kernel(mem, path)


# -- bzImage -------------------------------------------------------------------------
def make_bzimage(pm: bytes, *, setup_sects=3, version=0x020F, xloadflags=1, loadflags=1,
                 init_size=0, hdr_len=0x6A):
    hdr = ffi.new("struct setup_header *", {
        "setup_sects": setup_sects, "boot_flag": 0xAA55,
        "jump": 0xEB | (hdr_len << 8),                      # "jmp short" over the header
        "header": int.from_bytes(b"HdrS", "little"), "version": version,
        "loadflags": loadflags, "xloadflags": xloadflags, "initrd_addr_max": 0x37FFFFFF,
        "kernel_alignment": 0x200000, "cmdline_size": 2047, "init_size": init_size})
    setup = bytearray(((setup_sects or 4) + 1) * 512)
    setup[0x1F1:0x1F1 + len(pack(hdr))] = pack(hdr)
    return bytes(setup) + pm


def test_bzimage_loaded_at_16mib(mem, tmp_path):
    pm = os.urandom(64 * 1024)
    raw = make_bzimage(pm, init_size=0x200000)
    p = write(tmp_path, "bzImage", raw)
    assert detect_kernel_format(p) == "bzimage"
    k = load_kernel(mem, p)
    assert (k.kind, k.entry) == ("bzimage", 0x1000200)
    assert (k.load_start, k.load_end) == (0x1000000, 0x1200000)     # init_size > file part
    assert k.initrd_addr_max == 0x37FFFFFF
    assert k.setup_header == raw[0x1F1:0x202 + 0x6A]
    assert mem.read(0x1000000, len(pm)) == pm

    write_boot_params(mem, cmdline=b"console=ttyS0", setup_header=k.setup_header)
    h = read_boot_params(mem).hdr
    assert (h.version, h.setup_sects, h.initrd_addr_max) == (0x020F, 3, 0x37FFFFFF)
    assert h.kernel_alignment == 0x1000000 and h.type_of_loader == 0xFF


def test_bzimage_setup_sects_zero_means_four(mem, tmp_path):
    k = load_kernel(mem, write(tmp_path, "bz", make_bzimage(b"PMPM" * 64, setup_sects=0)))
    assert mem.read(0x1000000, 8) == b"PMPMPMPM" and k.entry == L.BZIMAGE_LOAD + 0x200


@pytest.mark.parametrize("kwargs,match", [
    (dict(version=0x0205), "2.05 is older than 2.06"),
    (dict(xloadflags=0), "XLF_KERNEL_64"),
    (dict(loadflags=0), "zImage"),
    (dict(init_size=200 * MiB), "needs RAM"),
])
def test_bzimage_refused(mem, tmp_path, kwargs, match):
    with pytest.raises(KernelLoadError, match=match):
        load_kernel(mem, write(tmp_path, "bz", make_bzimage(b"\x90" * 1024, **kwargs)))


# -- not a kernel at all -----------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b"#!/bin/sh\necho hi\n" * 100, b"\x1f\x8b" + bytes(5000)])
def test_non_kernel_refused(mem, tmp_path, content):
    p = write(tmp_path, "notakernel", content)
    with pytest.raises(KernelLoadError, match="neither an ELF vmlinux .* nor a bzImage"):
        detect_kernel_format(p)
    with pytest.raises(ConfigError, match=str(p)):
        load_kernel(mem, p)


def test_missing_kernel(tmp_path):
    with pytest.raises(KernelLoadError, match="cannot open kernel image .*No such file"):
        detect_kernel_format(tmp_path / "nope")


def test_real_vmlinux(guest_kernel):
    vmlinux = guest_kernel[0]
    m = GuestMemory(256 * MiB)
    try:
        assert detect_kernel_format(vmlinux) == "elf"
        k = load_kernel(m, vmlinux)
        assert k.load_start >= L.HIMEM_START and k.load_start <= k.entry < k.load_end
        if k.pvh_entry is not None:
            assert k.load_start <= k.pvh_entry < k.load_end
    finally:
        m.close()
