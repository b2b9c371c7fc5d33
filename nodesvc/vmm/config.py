"""VM configuration: Firecracker's `--config-file` JSON format, parsed strictly.

Key names, types and defaults follow Firecracker's `VmmConfig` (src/vmm/src/resources.rs
and vmm_config/*.rs). Everything is checked here, before any KVM state exists; every
failure is a `ConfigError` with one line that starts with the offending key path.
Deliberate differences: unknown top-level keys are refused (Firecracker ignores them),
`drives` may be omitted (we can boot from an initrd), and features this version does
not implement are refused instead of being silently ignored. Every key of Firecracker
1.16's schema is accepted while it holds its "absent" value (null, [], false, "None"),
as Firecracker's own tooling writes them (e.g. `drives[].socket: null`); anything else
in a feature we lack is one line naming the key and saying it is not supported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from . import hostfiles
from .errors import ConfigError, VmmError

MAX_VCPUS = 32              # Firecracker's MAX_SUPPORTED_VCPUS
# Floor: the kernel image, its page tables, the zero page/cmdline and an early heap must fit;
# a minimal Linux needs ~16 MiB just to decompress and reach init.
MIN_MEM_MIB = 16
MAX_MEM_MIB = 64 * 1024     # hard cap for a "micro" VM, whatever the host has
CMDLINE_MAX_BYTES = 2047    # Firecracker's CMDLINE_MAX_SIZE is 2048 including the NUL
HUGE_PAGES = ("None", "2M")
# Firecracker's x86_64 static templates. "None" means no template; the others would mask
# CPUID, which we don't implement yet, so they are refused rather than silently ignored.
CPU_TEMPLATES = ("None", "C3", "T2", "T2S", "T2CL", "T2A")
SUPPORTED_CPU_TEMPLATES = ("None",)


@dataclass
class MachineConfig:
    vcpu_count: int = 1
    mem_size_mib: int = 128
    smt: bool = False
    track_dirty_pages: bool = False
    huge_pages: str = "None"
    cpu_template: str | None = None


@dataclass
class BootSource:
    kernel_image_path: str
    boot_args: str | None = None    # None: the VM uses cmdline.DEFAULT_BOOT_ARGS
    initrd_path: str | None = None


@dataclass
class DeviceSpec:
    kind: str       # e.g. "virtio-block"; resolved through the plugin DeviceRegistry
    config: dict


@dataclass
class VmConfig:
    boot_source: BootSource
    machine_config: MachineConfig = field(default_factory=MachineConfig)
    devices: list[DeviceSpec] = field(default_factory=list)
    mmds: Any = None    # nodesvc.mmds.config.MmdsConfig: the mmds-config section, if any


# --- helpers ---------------------------------------------------------------------------

def _fail(path: str, msg: str) -> ConfigError:
    err = ConfigError(f"{path}: {msg}")
    err.path = path  # lets config_from_flags name the flag instead of the JSON key
    return err


def _show(v: Any) -> str:
    """A value as the JSON type plus its text, so `true` isn't mistaken for 1."""
    if v is None:
        return "null"
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if type(v) not in names:
        return {list: "array", dict: "object"}.get(type(v), type(v).__name__)
    text = json.dumps(v)
    return f"{names[type(v)]} {text if len(text) <= 40 else text[:37] + '...'}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)   # bool is an int in Python


def _want(path: str, v: Any, kind: str, *, nullable: bool = False) -> None:
    if v is None and nullable:
        return
    ok = {"integer": _is_int, "boolean": lambda x: isinstance(x, bool),
          "string": lambda x: isinstance(x, str)}[kind](v)
    if not ok:
        raise _fail(path, f"must be {'an' if kind == 'integer' else 'a'} {kind}"
                          f"{' or null' if nullable else ''}, got {_show(v)}")


def is_absent(v: Any) -> bool:
    """Firecracker's "not asked for": null, [], false, "None", or an object of such values."""
    if isinstance(v, dict):
        return all(is_absent(x) for x in v.values())
    return v is None or v is False or v == [] or v == "None"


def refuse_present(path: str, v: Any, feature: str) -> None:
    """The one-line refusal for a value that asks for a feature this version lacks."""
    if not is_absent(v):
        raise _fail(path, f"{feature} is not supported by this version (got {_show(v)}; "
                          "only an absent value is accepted)")


def _check_keys(path: str, obj: Any, allowed: tuple[str, ...], required: tuple[str, ...] = ()):
    if not isinstance(obj, dict):
        raise _fail(path, f"must be an object, got {_show(obj)}")
    for key in obj:
        if key not in allowed:
            hint = " (renamed to 'smt')" if key == "ht_enabled" else ""
            raise _fail(f"{path}.{key}" if path else key,
                        f"unknown key{hint}; allowed: {', '.join(allowed)}")
    for key in required:
        if key not in obj:
            raise _fail(f"{path}.{key}", "required key is missing")


# --- section handlers: one table, one line per section ---------------------------------

_BOOT_KEYS = ("kernel_image_path", "initrd_path", "boot_args")
_MACHINE_KEYS = ("vcpu_count", "mem_size_mib", "smt", "cpu_template",
                 "track_dirty_pages", "huge_pages", "gdb_socket_path")
# Keys of Firecracker 1.16 sections whose features this version lacks: each is accepted
# only while it holds its absent value (see is_absent).
ABSENT_ONLY: dict[str, tuple[str, tuple[str, ...]]] = {
    "balloon": ("a balloon device", ("amount_mib", "deflate_on_oom", "stats_polling_interval_s",
                                     "free_page_hinting", "free_page_reporting")),
    "logger": ("Firecracker's logger (nodesvc-vmm logs to stderr)",
               ("log_path", "level", "show_level", "show_log_origin", "module")),
    "metrics": ("Firecracker's metrics file", ("metrics_path",)),
    "cpu-config": ("a custom CPU template", ("kvm_capabilities", "cpuid_modifiers",
                                            "msr_modifiers", "reg_modifiers", "vcpu_features")),
    "memory-hotplug": ("memory hot-plug", ("total_size_mib", "block_size_mib", "slot_size_mib")),
}
# machine-config keys whose non-default values we lack (we'd otherwise ignore them silently).
_MACHINE_ABSENT_ONLY = {"smt": "smt (2 threads per core)",
                        "track_dirty_pages": "dirty page tracking (diff snapshots)",
                        "huge_pages": "hugetlbfs-backed guest memory",
                        "gdb_socket_path": "the GDB stub"}


def _boot_source(key: str, v: Any, out: dict) -> None:
    _check_keys(key, v, _BOOT_KEYS, required=("kernel_image_path",))
    out["boot_source"] = BootSource(**v)


def _machine_config(key: str, v: Any, out: dict) -> None:
    if v is None:       # Option<MachineConfig>: null means defaults
        return
    # Firecracker requires both sizes once the section is present.
    _check_keys(key, v, _MACHINE_KEYS, required=("vcpu_count", "mem_size_mib"))
    v = dict(v)
    if v.get("cpu_template") == "None":
        v["cpu_template"] = None
    refuse_present(f"{key}.gdb_socket_path", v.pop("gdb_socket_path", None),
                   _MACHINE_ABSENT_ONLY["gdb_socket_path"])
    out["machine_config"] = MachineConfig(**v)


def _unsupported(key: str, v: Any, out: dict) -> None:
    if v is not None:
        raise _fail(key, "section is not supported by this version yet")


def _absent_only(key: str, v: Any, out: dict) -> None:
    """A section of a feature we lack: null, or an object of known keys all absent."""
    if v is None:
        return
    feature, keys = ABSENT_ONLY[key]
    if key == "cpu-config" and isinstance(v, str):    # Firecracker: a path to a template
        raise _fail(key, f"{feature} is not supported by this version (got a path)")
    _check_keys(key, v, keys)
    for k, x in v.items():
        refuse_present(f"{key}.{k}", x, feature)


def _mmds_config(key: str, v: Any, out: dict) -> None:
    """Firecracker's mmds-config (nodesvc.mmds.config); the interfaces are checked once
    every section is read (see parse_config)."""
    if v is None:
        return
    from ..mmds.config import parse as parse_mmds
    out["mmds"] = parse_mmds(v, key)


def _check_mmds_interfaces(out: dict) -> None:
    if out.get("mmds") is not None:
        from ..mmds.config import check_interfaces
        check_interfaces(out["mmds"], (d.config.get("iface_id") for d in out["devices"]
                                       if d.kind == "virtio-net"), "mmds-config")


def _unsupported_list(key: str, v: Any, out: dict) -> None:
    if not isinstance(v, list):
        raise _fail(key, f"must be an array, got {_show(v)}")
    if v:   # [] is common in Firecracker configs and harmless
        raise _fail(key, "section is not supported by this version yet (only [] is accepted)")


def _devices(kind: str) -> Callable[[str, Any, dict], None]:
    """Handler for a list-of-devices section once a device kind implements it."""
    def handler(key: str, v: Any, out: dict) -> None:
        if not isinstance(v, list):
            raise _fail(key, f"must be an array, got {_show(v)}")
        for i, item in enumerate(v):
            if not isinstance(item, dict):
                raise _fail(f"{key}[{i}]", f"must be an object, got {_show(item)}")
            out["devices"].append(DeviceSpec(kind, dict(item)))
    return handler


def _device(kind: str) -> Callable[[str, Any, dict], None]:
    """Handler for a single-device section (vsock, entropy)."""
    def handler(key: str, v: Any, out: dict) -> None:
        if v is None:
            return
        if not isinstance(v, dict):
            raise _fail(key, f"must be an object, got {_show(v)}")
        out["devices"].append(DeviceSpec(kind, dict(v)))
    return handler


SECTIONS: dict[str, Callable[[str, Any, dict], None]] = {
    "boot-source": _boot_source,
    "machine-config": _machine_config,
    "drives": _devices("virtio-blk"),     # the kind orders them (root first)
    "network-interfaces": _devices("virtio-net"),
    "pmem": _unsupported_list,
    "vsock": _device("vsock"),
    "entropy": _device("virtio-rng"),
    "balloon": _absent_only,
    "logger": _absent_only,
    "metrics": _absent_only,
    "mmds-config": _mmds_config,
    "cpu-config": _absent_only,
    "memory-hotplug": _absent_only,
}


# --- public API ------------------------------------------------------------------------

def is_implemented(section: str) -> bool:
    """Whether this version accepts a non-empty value for a Firecracker config section."""
    return section in SECTIONS and SECTIONS[section] not in (_unsupported, _unsupported_list,
                                                             _absent_only)


def parse_config(obj: Any, *, host_mem_bytes: int | None = None) -> VmConfig:
    """Build and validate a VmConfig from a decoded Firecracker config-file object."""
    if not isinstance(obj, dict):
        raise _fail("config", f"top level must be a JSON object, got {_show(obj)}")
    _check_keys("", obj, tuple(SECTIONS))
    if "boot-source" not in obj:
        raise _fail("boot-source", "required section is missing")
    out: dict = {"machine_config": MachineConfig(), "devices": []}
    for key, value in obj.items():
        SECTIONS[key](key, value, out)
    _check_mmds_interfaces(out)
    cfg = VmConfig(out["boot_source"], out["machine_config"], out["devices"], out.get("mmds"))
    validate(cfg, host_mem_bytes=host_mem_bytes)
    return cfg


def load_config_file(path: str, *, host_mem_bytes: int | None = None) -> VmConfig:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _fail("--config-file", f"cannot read {path!r}: {getattr(e, 'strerror', e) or e}")
    try:    # like serde_json: no duplicate keys, no NaN/Infinity
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_nan)
    except json.JSONDecodeError as e:
        raise _fail(path, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except ValueError as e:
        raise _fail(path, f"invalid JSON: {e}") from None
    return parse_config(obj, host_mem_bytes=host_mem_bytes)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise ValueError(f"duplicate key {dup!r}")
    return dict(pairs)


def _no_nan(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_FLAG_FOR = {"boot-source.kernel_image_path": "--kernel", "boot-source.initrd_path": "--initrd",
             "boot-source.boot_args": "--boot-args", "machine-config.vcpu_count": "--vcpus",
             "machine-config.mem_size_mib": "--mem-mib"}


def config_from_flags(kernel: str, initrd: str | None = None, boot_args: str | None = None,
                      vcpus: int | None = None, mem_mib: int | None = None, *,
                      host_mem_bytes: int | None = None) -> VmConfig:
    """The quick-flag equivalent of a config file; goes through the same parser."""
    boot: dict = {"kernel_image_path": kernel}
    if initrd is not None:
        boot["initrd_path"] = initrd
    if boot_args is not None:
        boot["boot_args"] = boot_args
    machine = {"vcpu_count": 1 if vcpus is None else vcpus,
               "mem_size_mib": MachineConfig.mem_size_mib if mem_mib is None else mem_mib}
    try:
        return parse_config({"boot-source": boot, "machine-config": machine},
                            host_mem_bytes=host_mem_bytes)
    except ConfigError as e:
        path = getattr(e, "path", "")
        if path in _FLAG_FOR:
            raise _fail(_FLAG_FOR[path], str(e)[len(path) + 2:]) from None
        raise


def validate(cfg: VmConfig, *, host_mem_bytes: int | None = None) -> None:
    """Check values and host files; raises ConfigError naming the first bad key."""
    m, b = cfg.machine_config, cfg.boot_source
    p = "machine-config."
    _want(p + "vcpu_count", m.vcpu_count, "integer")
    _want(p + "mem_size_mib", m.mem_size_mib, "integer")
    _want(p + "smt", m.smt, "boolean")
    _want(p + "track_dirty_pages", m.track_dirty_pages, "boolean")
    _want(p + "huge_pages", m.huge_pages, "string")
    _want(p + "cpu_template", m.cpu_template, "string", nullable=True)
    if not 1 <= m.vcpu_count <= MAX_VCPUS:
        raise _fail(p + "vcpu_count", f"must be between 1 and {MAX_VCPUS}, got {m.vcpu_count}")
    if m.smt and m.vcpu_count > 1 and m.vcpu_count % 2:
        raise _fail(p + "smt", f"true requires vcpu_count to be 1 or even, got {m.vcpu_count}")
    if m.huge_pages not in HUGE_PAGES:
        raise _fail(p + "huge_pages", f"must be one of {', '.join(map(repr, HUGE_PAGES))}, "
                                      f"got {m.huge_pages!r}")
    if m.cpu_template is not None and m.cpu_template not in CPU_TEMPLATES:
        raise _fail(p + "cpu_template", f"must be one of {', '.join(CPU_TEMPLATES)}, "
                                        f"got {m.cpu_template!r}")
    if m.cpu_template not in (None, *SUPPORTED_CPU_TEMPLATES):
        raise _fail(p + "cpu_template",
                    f"{m.cpu_template!r} is not supported by this version yet (use \"None\")")
    for key in ("smt", "track_dirty_pages", "huge_pages"):
        refuse_present(p + key, getattr(m, key), _MACHINE_ABSENT_ONLY[key])
    _check_mem(p + "mem_size_mib", m, host_mem_bytes)

    p = "boot-source."
    _want(p + "kernel_image_path", b.kernel_image_path, "string")
    _want(p + "initrd_path", b.initrd_path, "string", nullable=True)
    _want(p + "boot_args", b.boot_args, "string", nullable=True)
    if b.boot_args is not None:
        _check_cmdline(p + "boot_args", b.boot_args)
    head = _read_head(p + "kernel_image_path", b.kernel_image_path)
    if kernel_format(b.kernel_image_path, head) is None:
        raise _fail(p + "kernel_image_path", f"{b.kernel_image_path!r} is not an ELF vmlinux "
                                             "or a bzImage (no \\x7fELF or HdrS magic)")
    if b.initrd_path is not None:
        _read_head(p + "initrd_path", b.initrd_path)


def _check_mem(path: str, m: MachineConfig, host_mem_bytes: int | None) -> None:
    mib = m.mem_size_mib
    if mib < MIN_MEM_MIB:
        raise _fail(path, f"must be at least {MIN_MEM_MIB} MiB (room for the kernel, its page "
                          f"tables and early allocations), got {mib}")
    if mib > MAX_MEM_MIB:
        raise _fail(path, f"must be at most {MAX_MEM_MIB} MiB, got {mib}")
    host = host_mem_bytes if host_mem_bytes is not None else host_mem_total()
    if host is not None and mib * (1 << 20) > host:
        raise _fail(path, f"{mib} MiB exceeds host memory ({host >> 20} MiB MemTotal)")


def _check_cmdline(path: str, args: str) -> None:
    size = len(args.encode("utf-8"))
    if size > CMDLINE_MAX_BYTES:
        raise _fail(path, f"is {size} bytes, at most {CMDLINE_MAX_BYTES} fit the kernel "
                          "command line buffer")
    bad = next((c for c in args if not " " <= c <= "~"), None)
    if bad is not None:   # linux-loader's Cmdline accepts printable ASCII only
        raise _fail(path, f"must be printable ASCII, found {bad!r}")


def _read_head(path: str, file: str) -> bytes:
    try:    # jailed (exec mode: checked in the jail): the descriptor the node handed in
        with hostfiles.open_file(file) if hostfiles.handed(file) else open(file, "rb") as f:
            return f.read(0x210)
    except OSError as e:
        raise _fail(path, f"cannot read {file!r}: {e.strerror or e}") from None


def host_mem_total() -> int | None:
    """Host MemTotal in bytes from /proc/meminfo, or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def kernel_format(path: str, head: bytes | None = None) -> str | None:
    """"elf" or "bzimage", None if neither. Uses the kernel loader's own check if present."""
    try:
        from .boot.kernel import detect_kernel_format
    except ImportError:
        return sniff_kernel(head if head is not None else _read_head("kernel", path))
    try:
        return detect_kernel_format(path)
    except (OSError, VmmError):     # KernelLoadError: "not a kernel I can load"
        return None


def sniff_kernel(head: bytes) -> str | None:
    if head[:4] == b"\x7fELF":
        return "elf"
    if head[0x202:0x206] == b"HdrS":     # x86 boot protocol header signature
        return "bzimage"
    return None
