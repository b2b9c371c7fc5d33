"""Taking a full snapshot of a paused MicroVm: a state file and a memory file.

Order (Firecracker's `save_state`): devices first — on the event-loop thread, which is
then held until the memory file is written, so no device callback (a TAP frame, a vsock
byte, a limiter's timer) can write guest memory or change device state meanwhile —
then every vCPU, then the VM (PIT, clock, irqchips), then the state file, then the memory
file. The VM stays paused; the caller resumes it (or not).
"""

from __future__ import annotations

import dataclasses
import threading
import time

from ... import __version__
from .cpu import HostCaps, save_vcpu, save_vm
from .devices import save_devices
from .format import SnapshotError, write_fd
from .memfile import regions_of, write_memory

LOOP_WAIT = 30.0    # Firecracker waits up to 30 s for its vCPUs' replies


def config_state(cfg) -> dict:
    """What a restore rebuilds the machine from (no boot source: nothing boots)."""
    return {"machine": dataclasses.asdict(cfg.machine_config),
            "devices": [{"kind": d.kind, "config": d.config} for d in cfg.devices],
            "kernel": cfg.boot_source.kernel_image_path,
            "boot_args": cfg.boot_source.boot_args,
            # as Firecracker: the MMDS version and interfaces, not its data store
            "mmds": dataclasses.asdict(cfg.mmds) if getattr(cfg, "mmds", None) else None}


class _LoopHold:
    """Runs a function on the event-loop thread and keeps that thread waiting until
    released: nothing else runs on the loop in between."""

    def __init__(self, loop):
        self.loop = loop
        self._done, self._release = threading.Event(), threading.Event()
        self._result = self._error = None

    def run(self, fn, *args):
        running = self.loop is not None and getattr(self.loop, "_thread", None) is not None \
            and self.loop._thread.is_alive()
        if not running:       # built, never started: nothing runs on the loop
            return fn(*args)

        def held():
            try:
                self._result = fn(*args)
            except BaseException as e:   # handed to the caller's thread
                self._error = e
            self._done.set()
            self._release.wait(LOOP_WAIT)

        self.loop.call_soon(held)
        if not self._done.wait(LOOP_WAIT):
            self._release.set()
            raise SnapshotError(f"the device event loop did not answer in {LOOP_WAIT:.0f} s")
        if self._error is not None:
            raise self._error
        return self._result

    def release(self) -> None:
        self._release.set()


def create_snapshot(vm, state_fd: int, mem_fd: int, *, meta: dict | None = None) -> dict:
    """Write `vm`'s full snapshot to the two open files. The VM must be paused. Returns
    figures: sizes and how long each part took."""
    if vm.vm is None or vm.memory is None:
        raise SnapshotError("the VM is not built (or already ended)")
    if not vm.paused:
        raise SnapshotError("the VM must be paused to take a snapshot")
    running = [v.vcpu.index for v in vm._vcpus if not (v._parked or v.join(timeout=0))]
    if running:
        raise SnapshotError(f"vCPU(s) {running} did not stop; no snapshot taken")
    t0 = time.monotonic()
    hold = _LoopHold(vm.loop)
    try:
        devices = hold.run(save_devices, vm)
        t_dev = time.monotonic()
        caps = HostCaps(vm.kvm, vm.vm)
        vcpus = [save_vcpu(v.vcpu, caps) for v in vm._vcpus]
        machine = save_vm(vm.vm)
        t_cpu = time.monotonic()
        state = {"vm_id": vm.vm_id, "created": time.time(), "nodesvc": __version__,
                 "config": config_state(vm.config),
                 "memory": {"size": vm.memory.size, "regions": regions_of(vm.memory)},
                 "vcpus": vcpus, "vm": machine, "devices": devices, "meta": meta or {}}
        state_size = write_fd(state_fd, state)
        t_state = time.monotonic()
        mem_written = write_memory(vm.memory, mem_fd)
        t_mem = time.monotonic()
    finally:
        hold.release()
    return {"state_bytes": state_size, "memory_bytes": vm.memory.size,
            "memory_written_bytes": mem_written,
            "seconds": {"devices": t_dev - t0, "vcpus_vm": t_cpu - t_dev,
                        "state_file": t_state - t_cpu, "memory_file": t_mem - t_state,
                        "total": t_mem - t0}}
