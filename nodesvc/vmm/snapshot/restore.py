"""Restoring a snapshot into a new MicroVm (this process; a VMM process calls it too).

    state file checked (magic, version, length, sha256) and the memory file's size
      → the config rebuilt from the snapshot, with a clone's overrides applied
      → MicroVm.build_from_snapshot: KVM VM, irqchip, PIT; guest memory mapped
        MAP_PRIVATE from the memory file; devices attached; vCPUs created
      → TSC frequency matched, vCPU state, VM state (PIT, clock, irqchips)
      → device state (virtio activations posted to the event loop, vsock reset last)
      → start() (or pause() then start() to come up paused)

Everything that can refuse the snapshot runs before a KVM VM exists; anything failing
later closes the half-built VM (MicroVm.build_from_snapshot), so nothing half-started
is left behind.
"""

from __future__ import annotations

import copy
import os

from ..config import BootSource, DeviceSpec, MachineConfig, VmConfig
from .cpu import HostCaps, match_tsc, restore_vcpu, restore_vm
from .devices import restore_devices
from .format import SnapshotError, SnapshotMismatch, read_fd
from .memfile import FileBackedMemory


def load_state(state_fd: int, mem_fd: int | None = None) -> dict:
    """Read and check a state file (and that the memory file is long enough)."""
    state = read_fd(state_fd)
    for key in ("config", "memory", "vcpus", "vm", "devices"):
        if key not in state:
            raise SnapshotMismatch(f"the state file has no {key!r} section")
    if mem_fd is not None:
        need = sum(s for _, s, _ in state["memory"]["regions"])
        have = os.fstat(mem_fd).st_size
        if have < need:
            raise SnapshotMismatch(f"the memory file is too short: {have} bytes, the "
                                   f"snapshot's memory needs {need}")
    return state


def apply_overrides(devices: list[dict], overrides: dict | None) -> list[dict]:
    """A clone's differences (Firecracker's snapshot/load `network_overrides` and
    `vsock_override`, plus a MAC per interface): a new list, the input untouched.

    overrides = {"network_overrides": [{"iface_id", "host_dev_name", "guest_mac"?}],
                 "vsock_override": {"uds_path"}}"""
    devices = copy.deepcopy(devices)
    overrides = overrides or {}
    unknown = set(overrides) - {"network_overrides", "vsock_override"}
    if unknown:
        raise SnapshotError(f"unknown restore override(s): {', '.join(sorted(unknown))}")
    nets = {d["config"].get("iface_id"): d for d in devices if d["kind"] == "virtio-net"}
    for o in overrides.get("network_overrides") or ():
        d = nets.get(o.get("iface_id"))
        if d is None:
            raise SnapshotError(f"network override for {o.get('iface_id')!r}: the snapshot has "
                                f"no such interface (it has: {', '.join(map(str, nets)) or 'none'})")
        for key in ("host_dev_name", "guest_mac", "netns"):
            if o.get(key) is not None:
                d["config"][key] = o[key]
    vo = overrides.get("vsock_override")
    if vo:
        vs = [d for d in devices if d["kind"] == "vsock"]
        if not vs:
            raise SnapshotError("vsock override: the snapshot has no vsock device")
        vs[0]["config"]["uds_path"] = vo["uds_path"]
    return devices


def config_from_state(state: dict, overrides: dict | None = None) -> VmConfig:
    c = state["config"]
    mc = MachineConfig(**c["machine"])
    if mc.mem_size_mib << 20 != state["memory"]["size"]:
        raise SnapshotMismatch(f"the snapshot's machine has {mc.mem_size_mib} MiB, its "
                               f"memory section {state['memory']['size']} bytes")
    if mc.vcpu_count != len(state["vcpus"]):
        raise SnapshotMismatch(f"the snapshot's machine has {mc.vcpu_count} vCPUs and "
                               f"{len(state['vcpus'])} saved vCPU states")
    devices = apply_overrides(c["devices"], overrides)
    mmds = c.get("mmds")
    if mmds:    # the mmds-config section again; its store starts empty, as in Firecracker
        from ...mmds.config import parse
        mmds = parse(dict(mmds, network_interfaces=list(mmds["network_interfaces"])))
    return VmConfig(BootSource(c.get("kernel") or "", c.get("boot_args")), mc,
                    [DeviceSpec(d["kind"], d["config"]) for d in devices], mmds or None)


def load_into(vm, state: dict) -> None:
    """The KVM and device state of `state` into a VM built with RESTORE_STEPS."""
    caps = HostCaps(vm.kvm, vm.vm)
    vcpus = [v.vcpu for v in vm._vcpus]
    match_tsc(vcpus, state["vcpus"][0].get("tsc_khz"), caps)
    for vcpu, s in zip(vcpus, state["vcpus"]):
        restore_vcpu(vcpu, s, caps)
    restore_vm(vm.vm, state["vm"])
    restore_devices(vm, state["devices"])


def restore_into(vm, state: dict, mem_fd: int) -> None:
    """Build `vm` (a MicroVm made from the snapshot's config, nothing built but maybe its
    device plan) from a checked snapshot; not started."""
    mc = vm.config.machine_config
    if mc.vcpu_count != len(state["vcpus"]) or mc.mem_size_mib << 20 != state["memory"]["size"]:
        raise SnapshotMismatch(
            f"the VM is configured with {mc.vcpu_count} vCPUs and {mc.mem_size_mib} MiB; the "
            f"snapshot has {len(state['vcpus'])} vCPUs and {state['memory']['size'] >> 20} MiB")
    regions = state["memory"]["regions"]
    vm.build_from_snapshot(lambda size: FileBackedMemory(size, mem_fd, regions),
                           lambda v: load_into(v, state))
    vm.restored_from = {"vm_id": state.get("vm_id"), "created": state.get("created")}


def restore_vm_from(state_fd: int, mem_fd: int, *, overrides: dict | None = None,
                    state: dict | None = None, **microvm_kwargs):
    """A new MicroVm from a snapshot, built and loaded, not started (`start()` runs it).
    `microvm_kwargs` go to MicroVm (vm_id, console_out, plugins, thread_hooks…)."""
    from ..vm import MicroVm
    if state is None:
        state = load_state(state_fd, mem_fd)
    vm = MicroVm(config_from_state(state, overrides), **microvm_kwargs)
    restore_into(vm, state, mem_fd)
    return vm
