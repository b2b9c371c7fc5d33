"""The steps that turn a validated `VmConfig` into a machine, each callable on its own.

    plan_devices → create_vm → create_memory → load_kernel → attach_devices
                 → write_boot_data → create_vcpus

A boot runs them all (`BOOT_STEPS`). A restore from a snapshot runs the machine-creation
steps and skips the boot ones (kernel, boot data, initial vCPU registers): that is why
creating the machine and booting it are separate steps. The steps fill in the target
`MicroVm` (kvm, vm, memory, loop, devices, transports, vcpus) so tear-down has one owner.

Device kinds come from the plugin registry as `DeviceKind`s (nodesvc.vmm.device); core
knows nothing of any kind's rules (drive order, unique ids): `plan_devices` asks each
kind, before any KVM state exists.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass

from . import cmdline as cmdline_mod
from . import x86
from .boot import acpi, gdt, initrd as initrd_mod, kernel as kernel_mod, mptable, zeropage
from .device import DeviceContext, PlannedDevice, plan_devices
from .errors import ConfigError, KvmError
from .eventloop import EventLoop
from .exits import ExitReason, VmExit
from .irq import IrqFdLine
from .kvm import Kvm
from .memory import GuestMemory
from .ratelimit import limiter_builder
from .vcpu import VcpuThread
from .virtio import VirtioMmioTransport, constants as V
from .virtio.boundary import DeviceLoop, ErrorBoundary

log = logging.getLogger("nodesvc.vmm.builder")

TSS_ADDR = 0xFFFB_D000
IDENTITY_MAP_ADDR = 0xFFFB_C000
#: Devices every VM gets (like Firecracker's legacy devices), then the config's own.
DEFAULT_DEVICES = (("serial", {}), ("i8042", {}))
VIRTIO_MMIO_BASE = 0xD000_0000
VIRTIO_FIRST_IRQ = 5
VIRTIO_MAX_DEVICES = 24 - VIRTIO_FIRST_IRQ  # IOAPIC pins 5..23


@dataclass(frozen=True)
class VirtioSlot:
    """Where a virtio-mmio device lives: the MMIO window and its interrupt (for the
    kernel command line today, and for ACPI tables and snapshots)."""
    base: int
    size: int
    irq: int
    name: str


class Builder:
    """Runs build steps against one `MicroVm` (the target owns what they create)."""

    def __init__(self, target, plugins):
        self.t, self.plugins = target, plugins
        self.plan: list[PlannedDevice] = []
        self.done: list[str] = []
        self.initrd = None
        self.virtio_slots: list[VirtioSlot] = []
        self._boundary: ErrorBoundary | None = None    # of the device being attached
        #: size -> GuestMemory; a restore maps the snapshot's memory file instead
        self.memory_factory = GuestMemory

    def run(self, *steps: str) -> None:
        """Run the named steps in order (each once), each timed as a phase of the target."""
        for name in steps:
            if name in self.done:
                continue
            t0 = time.monotonic()
            getattr(self, STEP_METHODS[name])()
            self.done.append(name)
            self.t._phase(name, t0)

    # -- machine creation (boot and restore) ----------------------------------------------
    def plan_devices(self) -> None:
        specs = list(DEFAULT_DEVICES) + [(d.kind, d.config) for d in self.t.config.devices]
        self.plan = plan_devices(self.plugins.device_registry(), specs)

    def create_vm(self) -> None:
        t = self.t
        t.kvm = Kvm()
        missing = t.kvm.missing_caps()
        if missing:
            raise KvmError("KVM_CHECK_EXTENSION", 0, "host KVM lacks " + ", ".join(missing))
        t.vm = t.kvm.create_vm()
        t.vm.set_tss_addr(TSS_ADDR)
        t.vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        t.vm.create_irqchip()
        t.vm.create_pit2()

    def create_memory(self) -> None:
        t = self.t
        t.memory = self.memory_factory(t.config.machine_config.mem_size_mib << 20)
        t.memory.register(t.vm)

    def attach_devices(self) -> None:
        t = self.t
        t.loop = EventLoop(on_error=lambda e: t.request_exit(
            VmExit(ExitReason.DEVICE_ERROR, f"event loop: {type(e).__name__}: {e}")),
            on_start=t.thread_hooks.get("loop"))
        limiters = self.plugins.rate_limiter_registry()
        self.ctx = DeviceContext(
            vm_id=t.vm_id, memory=t.memory, pio_bus=t.pio_bus, mmio_bus=t.mmio_bus,
            event_loop=t.loop, irq_line=self.irq_line, console_out=t.console_out,
            request_exit=t.request_exit, add_virtio_device=self.add_virtio_device,
            rate_limiter=limiter_builder(limiters, t.loop), devices=t.devices, mmds=t.mmds)
        for p in self.plan:
            # Each device sees the loop through its own error boundary, and so do its
            # rate limiters' timers: whatever the guest makes it do fails only it.
            boundary = self._boundary = ErrorBoundary(f"{p.kind}:{p.device_id}")
            dloop = DeviceLoop(t.loop, boundary)
            ctx = dataclasses.replace(self.ctx, event_loop=dloop,
                                      rate_limiter=limiter_builder(limiters, dloop))
            key = t.devices.add(p.kind, p.device_id, p.device_kind.attach(ctx, p.config))
            t.boundaries[key] = boundary
        self._boundary = None

    def add_virtio_device(self, device, name: str = "virtio") -> VirtioMmioTransport:
        """Give a virtio device its 4 KiB MMIO window and IRQ; its queue notifications
        are wired to ioeventfds now, at attach, not when the guest starts the device
        (no KVM_IOEVENTFD is issued from a vCPU thread, so its seccomp filter need
        not allow it)."""
        try:
            return self._add_virtio_device(device, name)
        except BaseException:
            device.close()      # the device's fds: it never became the VM's to close
            raise

    def _add_virtio_device(self, device, name: str) -> VirtioMmioTransport:
        t, n = self.t, len(self.virtio_slots)
        if n >= VIRTIO_MAX_DEVICES:
            raise ConfigError(f"too many virtio devices (at most {VIRTIO_MAX_DEVICES})")
        slot = VirtioSlot(VIRTIO_MMIO_BASE + n * V.MMIO_WINDOW, V.MMIO_WINDOW,
                          VIRTIO_FIRST_IRQ + n, name)
        tr = VirtioMmioTransport(device, memory=t.memory, irq=self.irq_line(slot.irq),
                                 event_loop=t.loop, vm=t.vm, base=slot.base, name=name,
                                 boundary=self._boundary)
        t.transports.append(tr)     # from here on, the VM's tear-down closes it
        tr.register_notify_fds()
        t.mmio_bus.insert(slot.base, slot.size, tr)
        self.virtio_slots.append(slot)
        return tr

    def irq_line(self, gsi: int) -> IrqFdLine:
        if not 0 <= gsi < 24:
            raise ConfigError(f"IRQ {gsi} is outside the IOAPIC's 24 pins")
        irqs = self.t._irqs
        if gsi not in irqs:
            irqs[gsi] = IrqFdLine(self.t.vm, gsi)
        return irqs[gsi]

    def create_vcpus(self, *, boot: bool = True) -> None:
        """One vCPU thread each; with `boot`, registers set for the kernel's entry (a
        restore sets them from the snapshot instead)."""
        t = self.t
        mc = t.config.machine_config
        supported = t.kvm.supported_cpuid()
        pv_off = x86.PVM_KVM_FEATURES_OFF if cmdline_mod.host_is_nested_pvm() else 0
        for i in range(mc.vcpu_count):
            vcpu = t.vm.create_vcpu(i)
            if boot:
                x86.configure_vcpu(vcpu, i, mc.vcpu_count, supported, t.kernel.entry,
                                   kvm_features_off=pv_off)
            t._vcpus.append(VcpuThread(vcpu, t.pio_bus, t.mmio_bus, t.memory, t.request_exit,
                                       on_start=t.thread_hooks.get("vcpu")))

    # -- boot only ------------------------------------------------------------------------
    def load_kernel(self) -> None:
        t, bs = self.t, self.t.config.boot_source
        t.kernel = kernel_mod.load_kernel(t.memory, bs.kernel_image_path)
        if bs.initrd_path:
            self.initrd = initrd_mod.load_initrd(t.memory, bs.initrd_path, t.kernel.load_end,
                                                 t.kernel.initrd_addr_max)

    def write_boot_data(self) -> None:
        t = self.t
        announce = [f"virtio_mmio.device=4K@{s.base:#x}:{s.irq}" for s in self.virtio_slots]
        t.cmdline = cmdline_mod.compose(t.config.boot_source.boot_args,
                                        self.ctx.cmdline + announce)
        zeropage.write_boot_params(t.memory, cmdline=t.cmdline.encode(), initrd=self.initrd,
                                   setup_header=t.kernel.setup_header, rng_seed=os.urandom(32))
        mptable.write_mptable(t.memory, t.config.machine_config.vcpu_count)
        # ACPI-only guests (no MP table parsing, no virtio_mmio.device=) find the same
        # vCPUs, IOAPIC, legacy devices and virtio-mmio windows in ACPI tables.
        uart = next((d for (kind, _), d in t.devices if kind == "serial"), None)
        acpi.write_acpi_tables(
            t.memory, t.config.machine_config.vcpu_count,
            [(s.base, s.size, s.irq) for s in self.virtio_slots],
            serial=(uart.port, uart.irq_gsi) if uart is not None else None,
            i8042=any(kind == "i8042" for kind, _ in t.devices.ids()))
        gdt.write_gdt_idt(t.memory)
        gdt.write_page_tables(t.memory)

    def create_boot_vcpus(self) -> None:
        self.create_vcpus(boot=True)

    def create_restore_vcpus(self) -> None:
        self.create_vcpus(boot=False)


#: step name (also the phase name in MicroVm.phases and the tracing spans) -> method
STEP_METHODS = {"plugins": "plan_devices", "kvm": "create_vm", "memory": "create_memory",
                "kernel": "load_kernel", "devices": "attach_devices",
                "boot-data": "write_boot_data", "vcpus": "create_boot_vcpus",
                "restore-vcpus": "create_restore_vcpus"}
BOOT_STEPS = ("plugins", "kvm", "memory", "kernel", "devices", "boot-data", "vcpus")
#: what a restore runs before it loads memory, device and vCPU state from a snapshot
MACHINE_STEPS = ("plugins", "kvm", "memory", "devices")
#: a restore: the machine, then vCPUs whose state comes from the snapshot
RESTORE_STEPS = MACHINE_STEPS + ("restore-vcpus",)
