"""A small AML (ACPI Machine Language) encoder: exactly the objects our DSDT holds.

Encodings follow ACPI 6.5, section 20.2 (AML grammar) and 6.4 (resource descriptors).
Everything is data: Name/Scope/Device objects, integers, strings, buffers, packages,
EISA ids and resource templates (I/O, Memory32Fixed, Extended Interrupt). No methods,
so the guest's AML interpreter never runs our code, only reads names.

Each encoder returns `bytes`; containers take already-encoded children, e.g.

    scope("\\_SB_", device("COM1", name("_HID", eisa_id("PNP0501")), ...))
"""

from __future__ import annotations

import re

# -- opcodes (20.3: AML byte stream byte values) ---------------------------------
ZERO_OP, ONE_OP, ONES_OP = 0x00, 0x01, 0xFF
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX, STRING_PREFIX, QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0D, 0x0E
NAME_OP, SCOPE_OP, BUFFER_OP, PACKAGE_OP = 0x08, 0x10, 0x11, 0x12
EXT_OP_PREFIX, DEVICE_OP = 0x5B, 0x82
ROOT_CHAR, PARENT_PREFIX = 0x5C, 0x5E                 # '\\', '^'
DUAL_NAME_PREFIX, MULTI_NAME_PREFIX, NULL_NAME = 0x2E, 0x2F, 0x00

# -- resource descriptors (6.4) --------------------------------------------------
IO_DESC = 0x47                 # small item, I/O port descriptor, 7 bytes of data
END_TAG = 0x79                 # small item, end tag, 1 byte (checksum) of data
MEMORY32_FIXED_DESC = 0x86     # large item
EXT_IRQ_DESC = 0x89            # large item, Extended Interrupt descriptor

PKG_LENGTH_MAX = (1 << 28) - 1
_NAME_SEG = re.compile(r"[A-Z_][A-Z0-9_]{0,3}\Z")


class AmlError(ValueError):
    pass


# -- names -----------------------------------------------------------------------
def name_seg(seg: str) -> bytes:
    """A 4-character NameSeg; shorter names are padded with '_' (20.2.2)."""
    if not _NAME_SEG.match(seg):
        raise AmlError(f"{seg!r} is not an ACPI NameSeg (1-4 of A-Z 0-9 _, not starting "
                       "with a digit)")
    return seg.ljust(4, "_").encode("ascii")


def name_string(path: str) -> bytes:
    """NameString: optional root '\\' or parent '^' prefixes, then dot-separated
    NameSegs encoded as one seg, DualNamePath, MultiNamePath or NullName."""
    prefix = b""
    rest = path
    if rest.startswith("\\"):
        prefix, rest = bytes([ROOT_CHAR]), rest[1:]
    else:
        while rest.startswith("^"):
            prefix, rest = prefix + bytes([PARENT_PREFIX]), rest[1:]
    segs = [name_seg(s) for s in rest.split(".")] if rest else []
    if not segs:
        return prefix + bytes([NULL_NAME])
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + b"".join(segs)
    if len(segs) > 255:
        raise AmlError(f"name path {path!r} has more than 255 segments")
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + b"".join(segs)


# -- PkgLength (20.2.4) ----------------------------------------------------------
def pkg_length(body_len: int) -> bytes:
    """The PkgLength for `body_len` bytes that follow it. The encoded value counts
    the PkgLength bytes themselves: one byte holds up to 63 (bits 0-5); otherwise bits
    7-6 of the lead byte give the number of following bytes (1-3), its bits 3-0 the low
    nibble, and the following bytes the next 8, 16 or 24 bits."""
    for extra in range(4):
        total = body_len + 1 + extra
        limit = 0x3F if extra == 0 else (1 << (4 + 8 * extra)) - 1
        if total <= limit:
            break
    else:
        raise AmlError(f"package of {body_len} bytes exceeds PkgLength's 2^28-1")
    if extra == 0:
        return bytes([total])
    lead = (extra << 6) | (total & 0x0F)
    return bytes([lead]) + (total >> 4).to_bytes(extra, "little")


def _with_pkg_length(body: bytes) -> bytes:
    return pkg_length(len(body)) + body


# -- data objects ----------------------------------------------------------------
def integer(value: int) -> bytes:
    """The shortest encoding: Zero/One/Ones op, or Byte/Word/DWord/QWord prefix.
    Ones (0xFF) is all bits set, which is 2^64-1 in a revision-2 (64-bit) DSDT."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise AmlError(f"AML integers are 0..2^64-1, got {value!r}")
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value == (1 << 64) - 1:
        return bytes([ONES_OP])
    for prefix, size in ((BYTE_PREFIX, 1), (WORD_PREFIX, 2), (DWORD_PREFIX, 4), (QWORD_PREFIX, 8)):
        if value < 1 << (8 * size):
            return bytes([prefix]) + value.to_bytes(size, "little")
    raise AssertionError("unreachable")


def string(text: str) -> bytes:
    """String: StringPrefix, ASCII characters 0x01-0x7F, NullChar."""
    data = text.encode("ascii")
    if b"\0" in data or any(c > 0x7F for c in data):
        raise AmlError(f"AML strings are ASCII without NUL: {text!r}")
    return bytes([STRING_PREFIX]) + data + b"\0"


def eisa_id(pnp: str) -> bytes:
    """EISAID("PNP0501"): three letters (5 bits each, 'A' = 1) and four hex digits
    packed into 32 bits, stored big-endian, emitted as a DWord integer."""
    if not re.fullmatch(r"[A-Z]{3}[0-9A-F]{4}", pnp):
        raise AmlError(f"{pnp!r} is not an EISA id (3 capital letters, 4 hex digits)")
    v = ((ord(pnp[0]) - 0x40) << 26) | ((ord(pnp[1]) - 0x40) << 21) | \
        ((ord(pnp[2]) - 0x40) << 16) | int(pnp[3:], 16)
    return bytes([DWORD_PREFIX]) + v.to_bytes(4, "big")


def buffer(data: bytes) -> bytes:
    """Buffer: BufferOp PkgLength BufferSize(integer) ByteList."""
    return bytes([BUFFER_OP]) + _with_pkg_length(integer(len(data)) + bytes(data))


def package(*elements: bytes) -> bytes:
    """Package: PackageOp PkgLength NumElements(byte) PackageElementList."""
    if len(elements) > 255:
        raise AmlError("a Package holds at most 255 elements (use VarPackage)")
    return bytes([PACKAGE_OP]) + _with_pkg_length(bytes([len(elements)]) + b"".join(elements))


# -- named objects and scopes ----------------------------------------------------
def name(path: str, value: bytes) -> bytes:
    """Name(path, value): NameOp NameString DataRefObject."""
    return bytes([NAME_OP]) + name_string(path) + value


def scope(path: str, *terms: bytes) -> bytes:
    """Scope(path) { terms }: ScopeOp PkgLength NameString TermList."""
    return bytes([SCOPE_OP]) + _with_pkg_length(name_string(path) + b"".join(terms))


def device(path: str, *terms: bytes) -> bytes:
    """Device(path) { terms }: ExtOpPrefix DeviceOp PkgLength NameString TermList."""
    body = name_string(path) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + _with_pkg_length(body)


# -- resource templates (6.4) ----------------------------------------------------
def io_port(base: int, length: int, *, alignment: int = 1, decode16: bool = True) -> bytes:
    """I/O port descriptor for a fixed range: min = max = base (6.4.2.5)."""
    if not 0 <= base <= 0xFFFF or not 0 <= length <= 0xFF or not 0 <= alignment <= 0xFF:
        raise AmlError(f"I/O range {base:#x}+{length} does not fit the descriptor")
    return (bytes([IO_DESC, int(decode16)]) + base.to_bytes(2, "little") * 2
            + bytes([alignment, length]))


def memory32_fixed(base: int, length: int, *, writable: bool = True) -> bytes:
    """32-bit fixed memory range descriptor (6.4.3.4): 9 bytes of data."""
    if not 0 <= base < 1 << 32 or not 0 <= length < 1 << 32 or base + length > 1 << 32:
        raise AmlError(f"memory range {base:#x}+{length:#x} is not below 4 GiB")
    return (bytes([MEMORY32_FIXED_DESC]) + (9).to_bytes(2, "little") + bytes([int(writable)])
            + base.to_bytes(4, "little") + length.to_bytes(4, "little"))


def interrupt(*gsis: int, consumer: bool = True, edge: bool = True, active_low: bool = False,
              shared: bool = False) -> bytes:
    """Extended Interrupt descriptor (6.4.3.6) without a resource source: flags
    (bit 0 consumer, 1 edge-triggered, 2 active-low, 3 shared), count, DWord GSIs."""
    if not 1 <= len(gsis) <= 255 or not all(0 <= g < 1 << 32 for g in gsis):
        raise AmlError(f"interrupt list {gsis!r} must hold 1..255 32-bit numbers")
    flags = int(consumer) | int(edge) << 1 | int(active_low) << 2 | int(shared) << 3
    data = bytes([flags, len(gsis)]) + b"".join(g.to_bytes(4, "little") for g in gsis)
    return bytes([EXT_IRQ_DESC]) + len(data).to_bytes(2, "little") + data


def resource_template(*descriptors: bytes) -> bytes:
    """ResourceTemplate(): a Buffer of descriptors closed by an End Tag whose
    checksum byte is 0 ("treat as valid", 6.4.2.9)."""
    return buffer(b"".join(descriptors) + bytes([END_TAG, 0]))
