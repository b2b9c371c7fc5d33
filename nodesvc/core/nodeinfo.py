"""GetNodeInfo's figures: capacity, allocation, VMs by state, versions, plugins."""

from __future__ import annotations

import collections
import platform
import socket
from importlib import metadata

from .model import VmState


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def plugins() -> list[dict]:
    from ..plugins import PluginManager
    try:
        return [{"name": p.name, "distribution": p.distribution, "version": p.version}
                for p in PluginManager.shared().plugins()]
    except Exception as e:  # a broken third-party plugin must not break GetNodeInfo
        return [{"name": "(error)", "distribution": type(e).__name__, "version": str(e)}]


def node_info(node) -> dict:
    cap = node.cfg.capacity
    mem, vcpus = node._allocated()
    by_state = collections.Counter(e.rec.state.value for e in node.vms.values())
    return {
        "hostname": socket.gethostname(), "cpus": cap.cpus,
        "memory_mib": cap.allocatable_mib, "memory_reserved_mib": cap.reserve_mib,
        "memory_allocated_mib": mem, "vcpus_allocated": vcpus,
        "cpu_overcommit": cap.cpu_overcommit,
        "vms_by_state": {s.value: by_state.get(s.value, 0) for s in VmState},
        "versions": {"nodesvc": _version("nodesvc"), "python": platform.python_version(),
                     "grpc": _version("grpcio"), "protobuf": _version("protobuf"),
                     "kernel": platform.release(), "api": "nodesvc.v1"},
        "plugins": plugins(),
        "revision": node.events.revision,
    }
