"""The host files a VMM reads and writes, opened by path — or, in a jail, handed in.

A jailed VMM has no host filesystem: the node opens the kernel, initrd, drives and TAPs
and passes the descriptors in (SCM_RIGHTS, then across the zygote's fork), keyed by what
the VM's config names them by (`path_on_host`, `tap_key(netns, name)`). Every host file
the VMM touches goes through `open_fd`, so the same code runs jailed and not: outside a
jail `open_fd` is `os.open`; jailed, it hands out a duplicate of the descriptor it was
given and refuses anything else with a clear error (never a path lookup in the jail).
"""

from __future__ import annotations

import errno
import fcntl
import os

_table: dict[str, int] | None = None     # None: not jailed, open by path
_views: dict[str, str] = {}              # host path -> the path the jailed VMM uses instead


def install(table: dict[str, int]) -> None:
    """From now on only these files exist for this process (called before the jail)."""
    global _table
    _table = dict(table)


def relocate(host_path: str, inside: str) -> None:
    """A socket the config names `host_path` lives at `inside` in the jail (the node
    links `host_path` to it): vsock's listener, in the jail's own run dir."""
    _views[host_path] = inside


def visible_path(host_path: str) -> str:
    return _views.get(host_path, host_path)


def jailed() -> bool:
    return _table is not None


def handed(key: str) -> bool:
    """Whether `key` was handed in (jailed: then it was checked before the jail closed)."""
    return _table is not None and key in _table


def tap_key(netns: str | None, name: str) -> str:
    return f"tap:{netns or ''}:{name}"


def open_fd(key: str, flags: int = os.O_RDONLY) -> int:
    """A new descriptor for host file `key` (a path), with O_CLOEXEC."""
    if _table is None:
        return os.open(key, flags | os.O_CLOEXEC)
    fd = _table.get(key)
    if fd is None:
        raise FileNotFoundError(errno.ENOENT, "not handed to the jailed VMM", key)
    wants_write = (flags & os.O_ACCMODE) != os.O_RDONLY
    if wants_write and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
        raise PermissionError(errno.EACCES, "handed to the jailed VMM read-only", key)
    return os.dup(fd)   # dup: O_CLOEXEC set, same open file (offsets shared; we use pread)


def add(key: str, fd: int) -> None:
    """Jailed: a file the node handed over later (a live drive swap); replaces `key`'s."""
    if _table is None:
        raise RuntimeError("hostfiles.add outside a jail")
    old = _table.pop(key, None)
    if old is not None:
        os.close(old)
    _table[key] = fd


def take(key: str) -> int | None:
    """Remove and return a handed-in descriptor (the TAP: one owner), None if absent."""
    return None if _table is None else _table.pop(key, None)


def open_file(key: str, mode: str = "rb"):
    """A file object at offset 0 (a handed-in descriptor's dups share one offset)."""
    fd = open_fd(key, os.O_RDONLY if "r" in mode and "+" not in mode else os.O_RDWR)
    os.lseek(fd, 0, os.SEEK_SET)
    return os.fdopen(fd, mode)

