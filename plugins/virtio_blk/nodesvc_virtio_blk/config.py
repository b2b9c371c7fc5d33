"""One entry of Firecracker's `drives[]`, checked strictly before any KVM state exists.

    {"drive_id": "rootfs", "path_on_host": "/img/rootfs.ext4", "is_root_device": true,
     "is_read_only": false, "partuuid": null, "cache_type": "Unsafe", "io_engine": "Sync",
     "rate_limiter": {...}, "socket": null}

Every failure is a one-line ConfigError starting with `drives[<drive_id>].<key>`.
Checks that need all drives at once (one root device, unique ids) cannot run here:
`validate()` sees one drive at a time; they run in the builder's device plan (the
kind's `arrange` in plugin.py, and the builder's unique-id check).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Mapping

from nodesvc.vmm.config import refuse_present
from nodesvc.vmm import hostfiles
from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.ratelimit import parse_limiter_config

KEYS = ("drive_id", "path_on_host", "is_root_device", "is_read_only", "partuuid",
        "cache_type", "io_engine", "rate_limiter", "socket")
CACHE_TYPES = ("Unsafe", "Writeback")
IO_ENGINES = ("Sync",)          # Firecracker's "Async" (io_uring) is not implemented
MAX_ID_LEN = 64                 # Firecracker's checked_id limit
_ID = re.compile(r"[A-Za-z0-9_]+")
# partuuid lands on the kernel command line: allow only what a PARTUUID can be
# (GPT UUID or MBR "SSSSSSSS-PP", optionally "/PARTNROFF=n"), never a space.
_PARTUUID = re.compile(r"[0-9A-Fa-f-]{1,36}(/PARTNROFF=-?[0-9]+)?")


@dataclass(frozen=True)
class DriveConfig:
    drive_id: str
    path_on_host: str
    is_root_device: bool
    is_read_only: bool = False
    partuuid: str | None = None
    cache_type: str = "Unsafe"
    io_engine: str = "Sync"
    rate_limiter: Mapping[str, Any] | None = None


def _bool(where: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{where}: must be a boolean, got {v!r}")
    return v


def _choice(where: str, v: Any, allowed: tuple[str, ...]) -> str:
    if v not in allowed:
        raise ConfigError(f"{where}: must be one of {', '.join(allowed)}; got {v!r}")
    return v


def check_backing_file(where: str, path: Any, read_only: bool) -> str:
    """The host file (or block device) must exist and be readable (and writable unless ro)."""
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}: must be a non-empty string, got {path!r}")
    if hostfiles.handed(path):      # jailed: opened by the node, checked before the jail
        return path
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"{where}: cannot use {path!r}: {e.strerror}") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise ConfigError(f"{where}: {path!r} is not a regular file or block device")
    need = os.R_OK | (0 if read_only else os.W_OK)
    if not os.access(path, need):
        mode = "reading" if read_only else "reading and writing"
        raise ConfigError(f"{where}: {path!r} is not accessible for {mode}")
    return path


def parse_drive(config: Mapping[str, Any]) -> DriveConfig:
    """Validate one `drives[]` object; return it normalised. Raises ConfigError."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"drives[]: must be an object, got {type(config).__name__}")
    drive_id = config.get("drive_id")
    if not isinstance(drive_id, str) or not _ID.fullmatch(drive_id) or len(drive_id) > MAX_ID_LEN:
        raise ConfigError(f"drives[].drive_id: must be 1-{MAX_ID_LEN} characters of "
                          f"[A-Za-z0-9_], got {drive_id!r}")
    p = f"drives[{drive_id}]"
    for key in config:
        if key not in KEYS:
            raise ConfigError(f"{p}.{key}: unknown key; allowed: {', '.join(KEYS)}")
    # vhost-user-blk (Firecracker 1.16's `socket`): accepted only as null
    refuse_present(f"{p}.socket", config.get("socket"), "a vhost-user block device")
    if config.get("io_engine") == "Async":
        refuse_present(f"{p}.io_engine", "Async", "the io_uring engine")
    if "is_root_device" not in config:
        raise ConfigError(f"{p}.is_root_device: required key is missing")
    root = _bool(f"{p}.is_root_device", config["is_root_device"])
    ro = config.get("is_read_only")
    ro = False if ro is None else _bool(f"{p}.is_read_only", ro)
    if config.get("path_on_host") is None:
        raise ConfigError(f"{p}.path_on_host: required key is missing")
    path = check_backing_file(f"{p}.path_on_host", config["path_on_host"], ro)
    partuuid = config.get("partuuid")
    if partuuid is not None and (not isinstance(partuuid, str) or not _PARTUUID.fullmatch(partuuid)):
        raise ConfigError(f"{p}.partuuid: not a partition UUID: {partuuid!r}")
    cache = config.get("cache_type")
    cache = "Unsafe" if cache is None else _choice(f"{p}.cache_type", cache, CACHE_TYPES)
    engine = config.get("io_engine")
    engine = "Sync" if engine is None else _choice(f"{p}.io_engine", engine, IO_ENGINES)
    limiter = config.get("rate_limiter")
    parse_limiter_config(limiter, f"{p}.rate_limiter")   # raises on a bad object
    return DriveConfig(drive_id, path, root, ro, partuuid, cache, engine, limiter)


def validate(config: Mapping[str, Any]) -> None:
    """The kind's `validate`: called by the VMM before any KVM state exists."""
    parse_drive(config)
