"""VM spec validation and translation to the VMM's Firecracker-format config.

A spec is a plain dict with the proto's field names (`json_format.MessageToDict(...,
preserving_proto_field_name=True)` of a VmSpec, or YAML/JSON from a CLI). `normalize`
checks every field and returns a complete dict with defaults filled in: that is what is
persisted and what `to_firecracker` turns into the VMM's config file. Every failure is an
InvalidSpec naming the field (`spec.drives[1].path_on_host: ...`), raised before anything
is created. Sections the VMM cannot run yet (its config parser refuses them) are checked
for shape first, then refused with Unsupported.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from typing import Any

from ..vmm import config as vmm_config
from ..vmm.device import plan_devices
from ..vmm.errors import ConfigError
from .errors import InvalidSpec, Unsupported

VM_ID = re.compile(r"[A-Za-z0-9-]{1,64}")        # Firecracker's instance id rule
DRIVE_ID = re.compile(r"[A-Za-z0-9_]{1,64}")         # virtio-blk's (Firecracker's) rule
IFACE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
LABEL_VALUE_MAX = 255
MAC = re.compile(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}")
IFNAMSIZ = 15
CACHE_TYPES = {"CACHE_TYPE_UNSPECIFIED": "Unsafe", "CACHE_TYPE_UNSAFE": "Unsafe",
               "CACHE_TYPE_WRITEBACK": "Writeback"}
MMDS_VERSIONS = {"VERSION_UNSPECIFIED": "V1", "VERSION_V1": "V1", "VERSION_V2": "V2"}
# Our field names for the Firecracker keys the VMM's parser reports.
_FC_TO_SPEC = {"machine-config.vcpu_count": "spec.machine.vcpus",
               "machine-config.mem_size_mib": "spec.machine.memory_mib",
               "machine-config.smt": "spec.machine.smt",
               "boot-source.kernel_image_path": "spec.boot.kernel_path",
               "boot-source.initrd_path": "spec.boot.initrd_path",
               "boot-source.boot_args": "spec.boot.boot_args"}
# Spec section -> (Firecracker config key, what provides it), for the Unsupported message.
_DEVICE_SECTIONS = {"drives": ("drives", "virtio-block"),
                    "network_interfaces": ("network-interfaces", "virtio-net"),
                    "vsock": ("vsock", "virtio-vsock"),
                    "entropy": ("entropy", "virtio-rng"),
                    "metadata_service": ("mmds-config", "the metadata service (MMDS)")}
# Device plugins name problems by Firecracker key: rename to the spec's fields.
_FC_PREFIXES = (("drives", "spec.drives"), ("network-interfaces[", "spec.network_interfaces["),
                ("vsock", "spec.vsock"), ("entropy", "spec.entropy"))


def check_vm_id(vm_id: Any, field: str = "vm_id") -> str:
    if not isinstance(vm_id, str) or not VM_ID.fullmatch(vm_id):
        raise InvalidSpec(field, f"must be 1-64 letters, digits or '-', got {vm_id!r}")
    return vm_id


def check_labels(labels: Any, field: str = "labels") -> dict[str, str]:
    if not isinstance(labels, dict):
        raise InvalidSpec(field, "must be a map of strings")
    for k, v in labels.items():
        if not isinstance(k, str) or not LABEL_KEY.fullmatch(k):
            raise InvalidSpec(f"{field}[{k!r}]", "key must be 1-63 of letters, digits, '.', "
                                                 "'_', '/', '-', starting with a letter or digit")
        if not isinstance(v, str) or len(v) > LABEL_VALUE_MAX:
            raise InvalidSpec(f"{field}[{k!r}]", f"value must be a string of at most "
                                                 f"{LABEL_VALUE_MAX} characters")
    return dict(labels)


# --- small typed getters: each names the field it complains about -----------------------

def _obj(v: Any, field: str, *, required: bool = False) -> dict | None:
    if v is None:
        if required:
            raise InvalidSpec(field, "is required")
        return None
    if not isinstance(v, dict):
        raise InvalidSpec(field, "must be an object")
    return v


def _int(d: dict, key: str, field: str, default: int = 0) -> int:
    v = d.get(key, default)
    if isinstance(v, str) and v.isdigit():     # proto JSON writes 64-bit ints as strings
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise InvalidSpec(f"{field}.{key}", f"must be a non-negative integer, got {v!r}")
    return v


def _str(d: dict, key: str, field: str) -> str:
    v = d.get(key, "")
    if not isinstance(v, str):
        raise InvalidSpec(f"{field}.{key}", f"must be a string, got {v!r}")
    return v


def _bool(d: dict, key: str, field: str) -> bool:
    v = d.get(key, False)
    if not isinstance(v, bool):
        raise InvalidSpec(f"{field}.{key}", f"must be true or false, got {v!r}")
    return v


def _enum(d: dict, key: str, field: str, names: dict) -> str:
    v = d.get(key, next(iter(names)))
    if v not in names:
        raise InvalidSpec(f"{field}.{key}", f"must be one of {', '.join(names)}, got {v!r}")
    return v


def _keys(d: dict, field: str, allowed: tuple[str, ...]) -> None:
    for k in d:
        if k not in allowed:
            raise InvalidSpec(f"{field}.{k}", f"unknown field; allowed: {', '.join(allowed)}")


def _path(d: dict, key: str, field: str, *, required: bool, must_exist: bool = True) -> str:
    p = _str(d, key, field)
    if not p:
        if required:
            raise InvalidSpec(f"{field}.{key}", "is required")
        return ""
    if not os.path.isabs(p):
        raise InvalidSpec(f"{field}.{key}", f"must be an absolute host path, got {p!r}")
    if must_exist and not os.path.exists(p):
        raise InvalidSpec(f"{field}.{key}", f"{p!r} does not exist on this host")
    return p


def _unique_id(d: dict, key: str, field: str, seen: set[str], rule: re.Pattern) -> str:
    v = _str(d, key, field)
    if not rule.fullmatch(v):
        what = "letters, digits or '_'" if rule is DRIVE_ID else "letters, digits, '_' or '-'"
        raise InvalidSpec(f"{field}.{key}", f"must be 1-64 {what}, got {v!r}")
    if v in seen:
        raise InvalidSpec(f"{field}.{key}", f"duplicate id {v!r}")
    seen.add(v)
    return v


def _list(v: Any, field: str) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise InvalidSpec(field, "must be a list")
    return v


# --- sections --------------------------------------------------------------------------

def rate_limiter(v: Any, field: str) -> dict | None:
    d = _obj(v, field)
    if d is None:
        return None
    _keys(d, field, ("bandwidth", "ops", "kind"))
    out = {}
    if _str(d, "kind", field):
        out["kind"] = d["kind"]
    for name in ("bandwidth", "ops"):
        b = _obj(d.get(name), f"{field}.{name}")
        if b is not None:
            f = f"{field}.{name}"
            _keys(b, f, ("size", "one_time_burst", "refill_time_ms"))
            out[name] = {k: _int(b, k, f) for k in ("size", "one_time_burst", "refill_time_ms")}
    return out


def _drives(v: Any) -> list[dict]:
    out, seen, root = [], set(), None
    for i, d in enumerate(_list(v, "spec.drives")):
        f = f"spec.drives[{i}]"
        d = _obj(d, f, required=True)
        _keys(d, f, ("drive_id", "path_on_host", "is_root_device", "is_read_only", "partuuid",
                     "cache_type", "rate_limiter"))
        drive = {"drive_id": _unique_id(d, "drive_id", f, seen, DRIVE_ID),
                 "path_on_host": _path(d, "path_on_host", f, required=True),
                 "is_root_device": _bool(d, "is_root_device", f),
                 "is_read_only": _bool(d, "is_read_only", f),
                 "partuuid": _str(d, "partuuid", f),
                 "cache_type": _enum(d, "cache_type", f, CACHE_TYPES)}
        if drive["is_root_device"]:
            if root is not None:
                raise InvalidSpec(f"{f}.is_root_device", f"drive {root!r} is the root already")
            root = drive["drive_id"]
        elif drive["partuuid"]:
            raise InvalidSpec(f"{f}.partuuid", "only the root drive may set a partuuid")
        rl = rate_limiter(d.get("rate_limiter"), f"{f}.rate_limiter")
        if rl is not None:
            drive["rate_limiter"] = rl
        out.append(drive)
    return out


def _interfaces(v: Any) -> list[dict]:
    out, seen, taps = [], set(), set()
    for i, d in enumerate(_list(v, "spec.network_interfaces")):
        f = f"spec.network_interfaces[{i}]"
        d = _obj(d, f, required=True)
        _keys(d, f, ("iface_id", "host_dev_name", "guest_mac", "rx_rate_limiter",
                     "tx_rate_limiter", "netns", "mtu"))
        iface = {"iface_id": _unique_id(d, "iface_id", f, seen, IFACE_ID),
                 "host_dev_name": _str(d, "host_dev_name", f),
                 "guest_mac": _str(d, "guest_mac", f), "netns": _str(d, "netns", f),
                 "mtu": _int(d, "mtu", f)}
        tap = iface["host_dev_name"]
        if not tap or len(tap) > IFNAMSIZ or "/" in tap or tap.strip() != tap:
            raise InvalidSpec(f"{f}.host_dev_name", f"must be a TAP device name of 1-{IFNAMSIZ} "
                                                    f"characters, got {tap!r}")
        if tap in taps:
            raise InvalidSpec(f"{f}.host_dev_name", f"TAP {tap!r} is used twice")
        taps.add(tap)
        if iface["guest_mac"] and not MAC.fullmatch(iface["guest_mac"]):
            raise InvalidSpec(f"{f}.guest_mac", f"must look like aa:bb:cc:dd:ee:ff, "
                                                f"got {iface['guest_mac']!r}")
        for k in ("rx_rate_limiter", "tx_rate_limiter"):
            rl = rate_limiter(d.get(k), f"{f}.{k}")
            if rl is not None:
                iface[k] = rl
        out.append(iface)
    return out


def _vsock(v: Any) -> dict | None:
    d = _obj(v, "spec.vsock")
    if d is None:
        return None
    f = "spec.vsock"
    _keys(d, f, ("guest_cid", "uds_path"))
    cid = _int(d, "guest_cid", f)
    if not 3 <= cid < 0xFFFFFFFF:
        raise InvalidSpec(f"{f}.guest_cid", f"must be at least 3 (0-2 are reserved), got {cid}")
    return {"guest_cid": cid, "uds_path": _path(d, "uds_path", f, required=True,
                                                 must_exist=False)}


def _entropy(v: Any) -> dict | None:
    d = _obj(v, "spec.entropy")
    if d is None:
        return None
    _keys(d, "spec.entropy", ("rate_limiter",))
    rl = rate_limiter(d.get("rate_limiter"), "spec.entropy.rate_limiter")
    return {"rate_limiter": rl} if rl is not None else {}


def _metadata_service(v: Any, ifaces: list[dict]) -> dict | None:
    d = _obj(v, "spec.metadata_service")
    if d is None:
        return None
    f = "spec.metadata_service"
    _keys(d, f, ("version", "network_interfaces", "ipv4_address"))
    names = _list(d.get("network_interfaces"), f"{f}.network_interfaces")
    known = {i["iface_id"] for i in ifaces}
    if not names:
        raise InvalidSpec(f"{f}.network_interfaces", "needs at least one iface_id")
    for n in names:
        if n not in known:
            raise InvalidSpec(f"{f}.network_interfaces", f"no network interface {n!r}")
    addr = _str(d, "ipv4_address", f) or "169.254.169.254"
    try:
        ip = ipaddress.IPv4Address(addr)
    except ValueError:
        raise InvalidSpec(f"{f}.ipv4_address", f"not an IPv4 address: {addr!r}") from None
    if ip not in ipaddress.IPv4Network("169.254.0.0/16"):   # Firecracker's rule
        raise InvalidSpec(f"{f}.ipv4_address", f"must be a link-local address "
                                               f"(169.254.0.0/16), got {addr}")
    return {"version": _enum(d, "version", f, MMDS_VERSIONS), "network_interfaces": list(names),
            "ipv4_address": addr}


def normalize(raw: Any, *, host_mem_bytes: int | None = None) -> dict:
    """Validate a spec dict; return it complete and normalized. Raises InvalidSpec/Unsupported."""
    spec = _obj(raw, "spec", required=True)
    _keys(spec, "spec", ("machine", "boot", *_DEVICE_SECTIONS))
    m = _obj(spec.get("machine"), "spec.machine", required=True)
    _keys(m, "spec.machine", ("vcpus", "memory_mib", "smt"))
    b = _obj(spec.get("boot"), "spec.boot", required=True)
    _keys(b, "spec.boot", ("kernel_path", "initrd_path", "boot_args"))
    out = {"machine": {"vcpus": _int(m, "vcpus", "spec.machine"),
                       "memory_mib": _int(m, "memory_mib", "spec.machine"),
                       "smt": _bool(m, "smt", "spec.machine")},
           "boot": {"kernel_path": _path(b, "kernel_path", "spec.boot", required=True),
                    "initrd_path": _path(b, "initrd_path", "spec.boot", required=False),
                    "boot_args": _str(b, "boot_args", "spec.boot")},
           "drives": _drives(spec.get("drives")),
           "network_interfaces": _interfaces(spec.get("network_interfaces"))}
    for key, value in (("vsock", _vsock(spec.get("vsock"))),
                       ("entropy", _entropy(spec.get("entropy"))),
                       ("metadata_service", _metadata_service(spec.get("metadata_service"),
                                                              out["network_interfaces"]))):
        if value is not None:
            out[key] = value
    check_vmm_accepts(out, host_mem_bytes=host_mem_bytes)
    return out


def check_vmm_accepts(spec: dict, *, host_mem_bytes: int | None = None) -> None:
    """Run the VMM's own config parser on the translated spec (kernel format, sizes...)."""
    fc = to_firecracker(spec)
    for section, (fc_key, provider) in _DEVICE_SECTIONS.items():
        if spec.get(section) and not vmm_config.is_implemented(fc_key):
            raise Unsupported(f"spec.{section}: {provider} is not available on this node yet")
    try:
        cfg = vmm_config.parse_config(fc, host_mem_bytes=host_mem_bytes)
    except ConfigError as e:
        path = getattr(e, "path", "")
        field = _FC_TO_SPEC.get(path, path)
        raise InvalidSpec(field, str(e)[len(path) + 2:] if path else str(e)) from None
    registry = device_registry()
    for dev in cfg.devices:
        if dev.kind not in registry:
            raise Unsupported(f"spec: no plugin on this node provides device kind {dev.kind!r}")
    try:    # the device kinds' own checks (one config, and across devices), as the VMM runs them
        plan_devices(registry, [(d.kind, d.config) for d in cfg.devices])
    except ConfigError as e:
        msg = str(e)
        for fc_prefix, ours in _FC_PREFIXES:
            if msg.startswith(fc_prefix):
                msg = ours + msg[len(fc_prefix):]
                break
        raise InvalidSpec("", msg) from None


@functools.lru_cache(maxsize=1)
def device_registry():
    """Device kinds of the plugins installed here (the VMM process loads the same ones)."""
    from ..plugins import PluginManager
    return PluginManager().device_registry()


def fc_limiter(rl: dict | None) -> dict | None:
    if rl is None:
        return None
    out: dict = {"kind": rl["kind"]} if rl.get("kind") else {}
    for k in ("bandwidth", "ops"):
        if k in rl:
            b = rl[k]
            out[k] = {"size": b["size"], "one_time_burst": b["one_time_burst"] or None,
                      "refill_time": b["refill_time_ms"]}
    return out


def to_firecracker(spec: dict) -> dict:
    """The VMM's config file (Firecracker's --config-file format) for a normalized spec."""
    m, b = spec["machine"], spec["boot"]
    boot = {"kernel_image_path": b["kernel_path"]}
    if b["initrd_path"]:
        boot["initrd_path"] = b["initrd_path"]
    if b["boot_args"]:
        boot["boot_args"] = b["boot_args"]
    fc: dict = {"boot-source": boot,
                "machine-config": {"vcpu_count": m["vcpus"], "mem_size_mib": m["memory_mib"],
                                   "smt": m["smt"]}}
    if spec["drives"]:
        fc["drives"] = [{"drive_id": d["drive_id"], "path_on_host": d["path_on_host"],
                         "is_root_device": d["is_root_device"], "is_read_only": d["is_read_only"],
                         "partuuid": d["partuuid"] or None,
                         "cache_type": CACHE_TYPES[d["cache_type"]],
                         "rate_limiter": fc_limiter(d.get("rate_limiter"))}
                        for d in spec["drives"]]
    if spec["network_interfaces"]:
        fc["network-interfaces"] = [
            {"iface_id": i["iface_id"], "host_dev_name": i["host_dev_name"],
             "guest_mac": i["guest_mac"] or None,
             "rx_rate_limiter": fc_limiter(i.get("rx_rate_limiter")),
             "tx_rate_limiter": fc_limiter(i.get("tx_rate_limiter")),
             **({"netns": i["netns"]} if i["netns"] else {}),
             **({"mtu": i["mtu"]} if i["mtu"] else {})}
            for i in spec["network_interfaces"]]
    if spec.get("vsock"):
        fc["vsock"] = {"guest_cid": spec["vsock"]["guest_cid"],
                       "uds_path": spec["vsock"]["uds_path"]}
    if spec.get("entropy") is not None:
        fc["entropy"] = {"rate_limiter": fc_limiter(spec["entropy"].get("rate_limiter"))}
    if spec.get("metadata_service"):
        ms = spec["metadata_service"]
        fc["mmds-config"] = {"version": MMDS_VERSIONS[ms["version"]],
                             "network_interfaces": ms["network_interfaces"],
                             "ipv4_address": ms["ipv4_address"]}
    return fc


def device_ids(spec: dict) -> dict[str, str]:
    """Every device that can take a rate limiter: id -> kind ("drive", "net-rx", "net-tx")."""
    ids = {d["drive_id"]: "drive" for d in spec.get("drives", [])}
    for i in spec.get("network_interfaces", []):
        ids[f"{i['iface_id']}/rx"] = "net-rx"
        ids[f"{i['iface_id']}/tx"] = "net-tx"
    if spec.get("entropy") is not None:
        ids["entropy"] = "entropy"
    return ids
