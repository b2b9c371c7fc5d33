"""The snapshot state file: a versioned, checksummed header in front of a JSON body.

    offset  size  field
         0     8  magic b"NSVCSNAP"
         8     2  format major (u16 LE)      a reader refuses any other major
        10     2  format minor (u16 LE)      ... and a minor newer than its own
        12     4  arch (u32 LE, 0x8664 = x86_64)
        16     8  body length in bytes (u64 LE)
        24    32  sha256 of the body
        56     …  body: UTF-8 JSON (binary KVM structs inside it are base64)

Like Firecracker's (magic, semver, state, CRC64) but with a SHA-256 over the body and a
length, so a truncated file and a flipped bit are told apart. Every check runs before
anything of the snapshot is used: a file that fails one is refused with an error that
names what is wrong, never half loaded. Any change to what the body means is a new
major; additions a current reader can ignore are a new minor.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

from ..errors import VmmError

MAGIC = b"NSVCSNAP"
FORMAT_MAJOR, FORMAT_MINOR = 1, 0
ARCH_X86_64 = 0x8664
_HEADER = struct.Struct("<8sHHIQ32s")
HEADER_SIZE = _HEADER.size
#: Firecracker caps its state file at 10 MB; ours is JSON with base64 inside, so larger.
MAX_BODY = 64 << 20


class SnapshotError(VmmError):
    """A snapshot cannot be taken or loaded."""


class SnapshotCorrupt(SnapshotError):
    """The state file is not a snapshot, is truncated, or fails its checksum."""


class SnapshotVersionError(SnapshotError):
    """The state file was written by an incompatible format version (or architecture)."""


class SnapshotMismatch(SnapshotError):
    """The snapshot does not fit what it is restored into (memory file, devices, host)."""


def encode(state: dict) -> bytes:
    body = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
    header = _HEADER.pack(MAGIC, FORMAT_MAJOR, FORMAT_MINOR, ARCH_X86_64, len(body),
                          hashlib.sha256(body).digest())
    return header + body


def decode(data: bytes, what: str = "state file") -> dict:
    """Check the header and checksum, then parse the body; raises SnapshotError."""
    if len(data) < HEADER_SIZE:
        if not MAGIC.startswith(data[:8]) or not data:
            raise SnapshotCorrupt(f"{what} is not a nodesvc snapshot ({len(data)} bytes, "
                                  "no snapshot header)")
        raise SnapshotCorrupt(f"{what} is truncated: {len(data)} bytes, shorter than "
                              f"the {HEADER_SIZE}-byte header")
    magic, major, minor, arch, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotCorrupt(f"{what} is not a nodesvc snapshot (magic {magic!r})")
    if major != FORMAT_MAJOR or minor > FORMAT_MINOR:
        raise SnapshotVersionError(
            f"{what} has snapshot format {major}.{minor}; this VMM reads "
            f"{FORMAT_MAJOR}.0 to {FORMAT_MAJOR}.{FORMAT_MINOR}")
    if arch != ARCH_X86_64:
        raise SnapshotVersionError(f"{what} is for architecture {arch:#x}, not x86_64")
    if length > MAX_BODY:
        raise SnapshotCorrupt(f"{what} claims a {length}-byte body (limit {MAX_BODY})")
    body = data[HEADER_SIZE:]
    if len(body) < length:
        raise SnapshotCorrupt(f"{what} is truncated: body has {len(body)} of {length} bytes")
    if len(body) > length:
        raise SnapshotCorrupt(f"{what} has {len(body) - length} bytes after its body")
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotCorrupt(f"{what} fails its sha256 checksum (corrupt)")
    try:
        state = json.loads(body)
    except ValueError as e:   # a correct checksum over bad JSON: a writer bug
        raise SnapshotCorrupt(f"{what} body is not valid JSON: {e}") from None
    if not isinstance(state, dict):
        raise SnapshotCorrupt(f"{what} body is not a JSON object")
    return state


def read_fd(fd: int, what: str = "state file") -> dict:
    """Decode a state file from an open descriptor (read from offset 0, never past the cap)."""
    chunks, total = [], 0
    while total <= HEADER_SIZE + MAX_BODY:
        chunk = os.pread(fd, 1 << 20, total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return decode(b"".join(chunks), what)


def write_fd(fd: int, state: dict) -> int:
    """Write an encoded state file at offset 0 of `fd` (truncated first); returns its size."""
    data = encode(state)
    os.ftruncate(fd, 0)
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:done + (1 << 20)], done)
    os.fsync(fd)
    return len(data)
