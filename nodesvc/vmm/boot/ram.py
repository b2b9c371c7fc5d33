"""Guest RAM geometry as the boot code sees it, independent of GuestMemory internals."""

from __future__ import annotations

from .errors import BootError


def ram_ranges(mem) -> list[tuple[int, int]]:
    """Sorted (guest_addr, size) RAM ranges. Accepts regions given as tuples or as
    objects with `guest_addr`/`size` attributes."""
    out = []
    for r in mem.regions:
        if isinstance(r, tuple):
            out.append((int(r[0]), int(r[1])))
        else:
            out.append((int(r.guest_addr), int(r.size)))
    return sorted(out)


def low_ram_end(mem) -> int:
    """End of the RAM range that starts at guest address 0 (below the MMIO gap)."""
    for start, size in ram_ranges(mem):
        if start == 0:
            return size
    raise BootError("guest memory has no RAM at guest physical address 0")


def in_ram(mem, addr: int, length: int) -> bool:
    """True if [addr, addr+length) lies inside one RAM range."""
    return any(s <= addr and addr + length <= s + n for s, n in ram_ranges(mem))


_ZEROS = bytes(1 << 20)


def fill_zero(mem, gpa: int, length: int) -> None:
    """Zero guest RAM in 1 MiB chunks (no huge temporary buffers)."""
    view = mem.view(gpa, length)
    for off in range(0, length, len(_ZEROS)):
        n = min(len(_ZEROS), length - off)
        view[off:off + n] = _ZEROS[:n]


def copy_file_to_guest(f, file_offset: int, mem, gpa: int, length: int) -> int:
    """Read `length` bytes of open file `f` at `file_offset` straight into guest RAM.
    Returns the number of bytes copied (short only if the file ends early)."""
    f.seek(file_offset)
    view = mem.view(gpa, length)
    done = 0
    while done < length:
        n = f.readinto(view[done:])
        if not n:
            break
        done += n
    return done
