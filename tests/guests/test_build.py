"""The tiny guests build, are cached, and have the ELF layout the VMM's loader expects.

No KVM needed: this runs wherever gcc does (skipped otherwise). Running the guests
is tests/kvm/test_tiny_guests.py's job.
"""

import shutil
import subprocess

import pytest

from .build import GUESTS, GuestBuildError, build_guest, check_elf

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    out = tmp_path_factory.mktemp("guests")
    return out, {name: build_guest(name, out) for name in GUESTS}


@pytest.mark.parametrize("name", GUESTS)
def test_layout(built, name):
    info = check_elf(built[1][name])
    assert info.entry == 0x100000
    assert all(s.paddr >= 0x100000 and s.paddr == s.vaddr for s in info.segments)
    # text R-X first, then data RW- whose .bss/.noinit tail is not in the file
    text, data = info.segments
    assert text.paddr == 0x100000 and text.flags == 5
    assert data.flags == 6 and data.memsz > data.filesz


def _disassembly(elf):
    if shutil.which("objdump") is None:
        pytest.skip("objdump is not installed")
    return subprocess.run(["objdump", "-d", str(elf)], capture_output=True, text=True,
                          check=True).stdout


#: Mnemonics the nested-PVM emulator cannot handle or that are slow there (KVM_HERE.md).
FORBIDDEN = {"xrstor", "xrstors", "xsave", "xsaves", "xsavec", "xsaveopt", "clac", "stac",
             "rdrand", "rdseed", "cmpxchg16b", "endbr64", "popcnt", "int3", "int"}


@pytest.mark.parametrize("name", GUESTS)
def test_no_instructions_the_emulator_chokes_on(built, name):
    found = set()
    for line in _disassembly(built[1][name]).splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[2].strip():
            continue
        insn = parts[2].strip()
        words = insn.split()
        if words[0].startswith("rep") or "%es:(%rdi)" in insn or "%ds:(%rsi)" in insn:
            found.add(insn)  # string instructions
        if words[0] in FORBIDDEN or "%xmm" in insn or "%ymm" in insn:
            found.add(words[0])
    if name == "badinsn":  # its whole point: exactly these, behind insn=...
        assert found == {"popcnt", "int3"}
    else:
        assert not found


def test_smp_trampoline_is_self_contained(built):
    # The real-mode trampoline is copied below 1 MiB, so it must not be in .text
    # (which would need relocation) and must fit in one page.
    syms = subprocess.run(["nm", str(built[1]["smp"])], capture_output=True, text=True,
                          check=True).stdout.split("\n")
    addr = {line.split()[2]: int(line.split()[0], 16) for line in syms if len(line.split()) == 3}
    assert 0 < addr["ap_tramp_end"] - addr["ap_tramp_start"] <= 4096


@needs_gcc
def test_build_is_cached(tmp_path):
    elf = build_guest("hello", tmp_path)
    before = elf.stat().st_mtime_ns
    assert build_guest("hello", tmp_path) == elf
    assert elf.stat().st_mtime_ns == before
    assert build_guest("hello", tmp_path, force=True).stat().st_mtime_ns >= before
    assert [p.name for p in tmp_path.iterdir()] == ["hello.elf"]  # no temp files left


def test_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GUEST_CC", "no-such-compiler-xyz")
    with pytest.raises(GuestBuildError, match="not found"):
        build_guest("hello", tmp_path)


def test_unknown_guest(tmp_path):
    with pytest.raises(GuestBuildError, match="unknown guest"):
        build_guest("nope", tmp_path)


def test_compiler_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GUEST_CC", "false")  # exits 1
    with pytest.raises(GuestBuildError, match="building guest 'hello' failed"):
        build_guest("hello", tmp_path)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
