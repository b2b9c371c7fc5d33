"""The snapshot files a VMM process writes or reads: handed in when jailed, else by path.

A jailed VMM cannot open host paths: the node creates (or opens) the files and hands the
descriptors over with the request (`files` on the control call, nodesvc.vmm.hostfiles).
Unjailed (--no-jail, tests), the VMM opens the paths itself.
"""

from __future__ import annotations

import os

from .. import hostfiles
from .format import SnapshotError


def open_for_write(path: str) -> int:
    if hostfiles.jailed():
        if not hostfiles.handed(path):
            raise SnapshotError(f"{path!r} was not handed to the jailed VMM")
        return hostfiles.open_fd(path, os.O_RDWR)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise SnapshotError(f"cannot create {path!r}: {e.strerror}") from None


def open_for_read(path: str) -> int:
    try:
        return hostfiles.open_fd(path, os.O_RDONLY)
    except OSError as e:
        raise SnapshotError(f"cannot open {path!r}: {e.strerror}") from None
