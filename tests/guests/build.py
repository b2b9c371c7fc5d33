"""Build the tiny freestanding test guests (see README.md in this folder).

    from tests.guests.build import build_guest
    elf = build_guest("hello")          # -> tests/guests/out/hello.elf, cached

    python -m tests.guests.build [name ...] [--outdir DIR] [--force]

Each guest is one C file plus the shared lib.c/start.S (and extra sources listed in
EXTRA_SOURCES), linked with link.ld into an ELF64 ET_EXEC whose PT_LOADs start at
physical 0x100000. A build is skipped while the ELF is newer than every input
(including this file, which holds the flags). Builds write to a temporary file and
rename it into place, so concurrent test processes never see a half-written ELF.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

GUEST_DIR = Path(__file__).resolve().parent
DEFAULT_OUTDIR = GUEST_DIR / "out"

#: Every guest, in a sensible order for `build_all`.
GUESTS = ("hello", "bootinfo", "smp", "badinsn", "triple", "echo", "ioloop", "idle",
          "virtio_kick", "hostile", "poke", "counter")

COMMON_SOURCES = ("lib.c", "start.S")
EXTRA_SOURCES = {"smp": ("trampoline.S",), "counter": ("trampoline.S",)}
HEADERS = ("lib.h", "smp.h")
LINKER_SCRIPT = "link.ld"

CFLAGS = (
    "-ffreestanding", "-nostdlib", "-static", "-fno-pic", "-no-pie",
    "-mno-red-zone", "-mno-sse", "-mgeneral-regs-only",
    "-O2", "-fno-stack-protector", "-fcf-protection=none",
    # No libc: never turn loops into memcpy/memset calls or inline string builtins
    # (rep movs/stos are slow under emulation).
    "-fno-builtin", "-fno-tree-loop-distribute-patterns",
    "-fno-asynchronous-unwind-tables", "-fno-unwind-tables",
    # Loop/jump alignment padding would be executed (as long NOPs): skip it.
    "-falign-loops=1", "-falign-jumps=1", "-falign-labels=1",
    "-ffunction-sections", "-fdata-sections",
    "-Wall", "-Wextra",
)
LDFLAGS = (
    "-Wl,--gc-sections", "-Wl,--build-id=none", "-Wl,-z,max-page-size=4096",
    "-Wl,-z,noexecstack",
)

LOAD_BASE = 0x100000


class GuestBuildError(RuntimeError):
    """The guest could not be built (no compiler, unknown guest, compile error)."""


def _compiler() -> str:
    cc = os.environ.get("GUEST_CC") or "gcc"
    path = shutil.which(cc)
    if path is None:
        raise GuestBuildError(
            f"cannot build tiny test guests: C compiler {cc!r} not found on PATH "
            "(install gcc, e.g. `apt-get install gcc`, or set GUEST_CC)")
    return path


def guest_sources(name: str) -> list[Path]:
    """The files a guest is compiled from (C and assembly), in command-line order."""
    if name not in GUESTS:
        raise GuestBuildError(f"unknown guest {name!r}; known: {', '.join(GUESTS)}")
    names = (f"{name}.c", *COMMON_SOURCES, *EXTRA_SOURCES.get(name, ()))
    return [GUEST_DIR / n for n in names]


def _inputs(name: str) -> list[Path]:
    return [*guest_sources(name), *(GUEST_DIR / h for h in HEADERS),
            GUEST_DIR / LINKER_SCRIPT, Path(__file__).resolve()]


def _up_to_date(elf: Path, inputs: list[Path]) -> bool:
    try:
        built = elf.stat().st_mtime_ns
    except FileNotFoundError:
        return False
    return all(built > p.stat().st_mtime_ns for p in inputs)


def build_guest(name: str, outdir: Path | None = None, *, force: bool = False) -> Path:
    """Compile guest `name` into `<outdir>/<name>.elf` (default tests/guests/out/).

    Returns the ELF path. Skips the compiler when the ELF is newer than all its
    inputs unless `force`. Raises GuestBuildError if gcc is missing or fails.
    """
    outdir = Path(outdir) if outdir is not None else DEFAULT_OUTDIR
    sources = guest_sources(name)
    elf = outdir / f"{name}.elf"
    if not force and _up_to_date(elf, _inputs(name)):
        return elf
    cc = _compiler()
    outdir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".elf.tmp", dir=outdir)
    os.close(fd)
    try:
        cmd = [cc, *CFLAGS, "-I", str(GUEST_DIR), "-T", str(GUEST_DIR / LINKER_SCRIPT),
               *LDFLAGS, "-o", tmp, *map(str, sources)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise GuestBuildError(
                f"building guest {name!r} failed (exit {proc.returncode}):\n"
                f"$ {' '.join(cmd)}\n{proc.stderr.strip()}")
        check_elf(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, elf)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return elf


def build_all(outdir: Path | None = None, *, force: bool = False) -> dict[str, Path]:
    """Build every guest; returns {name: elf path}."""
    return {name: build_guest(name, outdir, force=force) for name in GUESTS}


@dataclass(frozen=True)
class Segment:
    paddr: int
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int


@dataclass(frozen=True)
class ElfInfo:
    entry: int
    segments: tuple[Segment, ...]  # PT_LOAD only


def read_elf(path: Path) -> ElfInfo:
    """Parse the ELF64 header and PT_LOAD program headers (no dependencies)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise GuestBuildError(f"{path}: not a little-endian ELF64 file")
    e_type, e_machine, _, e_entry, e_phoff = struct.unpack_from("<HHIQQ", data, 16)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    if e_type != 2 or e_machine != 62:
        raise GuestBuildError(f"{path}: not an x86-64 ET_EXEC (type {e_type}, machine {e_machine})")
    segs = []
    for i in range(e_phnum):
        p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _ = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + i * e_phentsize)
        if p_type == 1:
            segs.append(Segment(p_paddr, p_vaddr, p_offset, p_filesz, p_memsz, p_flags))
    return ElfInfo(e_entry, tuple(segs))


def check_elf(path: Path) -> ElfInfo:
    """Validate the layout the VMM's loader expects; raises GuestBuildError if off."""
    info = read_elf(path)
    if not info.segments:
        raise GuestBuildError(f"{path}: no PT_LOAD segments")
    for s in info.segments:
        if s.paddr < LOAD_BASE or s.paddr != s.vaddr:
            raise GuestBuildError(f"{path}: PT_LOAD at paddr {s.paddr:#x} vaddr {s.vaddr:#x} "
                                  f"(must be identity-mapped at >= {LOAD_BASE:#x})")
        if s.filesz > s.memsz:
            raise GuestBuildError(f"{path}: PT_LOAD filesz > memsz")
    if min(s.paddr for s in info.segments) != LOAD_BASE:
        raise GuestBuildError(f"{path}: first PT_LOAD is not at {LOAD_BASE:#x}")
    if not any(s.paddr <= info.entry < s.paddr + s.filesz and s.flags & 1 for s in info.segments):
        raise GuestBuildError(f"{path}: entry {info.entry:#x} is not in an executable PT_LOAD")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.guests.build", description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help=f"guests to build (default: all of {', '.join(GUESTS)})")
    ap.add_argument("--outdir", type=Path, default=None, help=f"default {DEFAULT_OUTDIR}")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = ap.parse_args(argv)
    try:
        for name in args.names or GUESTS:
            elf = build_guest(name, args.outdir, force=args.force)
            info = read_elf(elf)
            segs = ", ".join(f"{s.paddr:#x}+{s.memsz:#x}" for s in info.segments)
            print(f"{name:9} {elf}  entry {info.entry:#x}  load {segs}")
    except GuestBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
