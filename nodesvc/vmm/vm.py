"""`MicroVm`: builds one VM from a validated `VmConfig` and runs it to its end.

Build steps (each small, in order, timed in `phases` for tracing and benchmarks):
kvm → memory → kernel → devices → boot data → vcpus. Plugin hooks run here,
during the build, never per exit. `run()` starts the event loop and vCPU
threads and returns the first `VmExit` any of them (or `stop()`) reports.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from . import cmdline as cmdline_mod
from . import x86
from .boot import gdt, initrd as initrd_mod, kernel as kernel_mod, mptable, zeropage
from .bus import Bus
from .device import DeviceContext
from .errors import ConfigError, KvmError
from .eventloop import EventLoop
from .exits import ExitReason, VmExit
from .irq import IrqFdLine
from .kvm import Kvm
from .memory import GuestMemory
from .ratelimit import limiter_builder
from .vcpu import VcpuThread, install_kick_handler
from .virtio import VirtioMmioTransport, constants as V

log = logging.getLogger("nodesvc.vmm")

TSS_ADDR = 0xFFFB_D000
IDENTITY_MAP_ADDR = 0xFFFB_C000
#: Devices every VM gets (like Firecracker's legacy devices), then the config's own.
DEFAULT_DEVICES = (("serial", {}), ("i8042", {}))
VIRTIO_MMIO_BASE = 0xD000_0000
VIRTIO_FIRST_IRQ = 5
VIRTIO_MAX_DEVICES = 24 - VIRTIO_FIRST_IRQ  # IOAPIC pins 5..23


class MicroVm:
    def __init__(self, config, *, vm_id: str = "vm0", console_out=None,
                 console_in_fd: int | None = None, console_escape: bool = False,
                 plugins=None):
        self.config, self.vm_id = config, vm_id
        self.console_out = console_out if console_out is not None else _NullSink()
        self.console_in_fd, self.console_escape = console_in_fd, console_escape
        self._plugins = plugins
        self.phases: dict[str, float] = {}
        #: phase name -> (start, end) on the time.monotonic() clock, for tracing
        self.phase_times: dict[str, tuple[float, float]] = {}
        self.created_at = time.monotonic()
        self.devices: dict[str, object] = {}
        self.cmdline = ""
        self._exit: VmExit | None = None
        self._done = threading.Event()
        self._exit_lock = threading.Lock()
        self._irqs: dict[int, IrqFdLine] = {}
        self._vcpus: list[VcpuThread] = []
        self.transports: list[VirtioMmioTransport] = []
        self._built = False
        self.paused = False
        self.kvm = self.vm = self.memory = self.loop = None
        self.pio_bus, self.mmio_bus = Bus("pio"), Bus("mmio")

    # -- build ----------------------------------------------------------------
    def _phase(self, name: str, t0: float) -> None:
        now = time.monotonic()
        self.phases[name] = now - t0
        self.phase_times[name] = (t0, now)

    @property
    def first_run_at(self) -> float | None:
        """time.monotonic() of the first KVM_RUN on any vCPU, once there was one."""
        first = [v.stats.first_run_at for v in self._vcpus if v.stats.first_run_at]
        return min(first) if first else None

    def build(self) -> None:
        if self._built:
            return
        self._built = True
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        mc, bs = self.config.machine_config, self.config.boot_source
        t = time.monotonic()
        if self._plugins is None:
            from ..plugins import PluginManager
            self._plugins = PluginManager()
        registry = self._plugins.device_registry()
        specs = list(DEFAULT_DEVICES) + [(d.kind, d.config) for d in self.config.devices]
        for kind, cfg in specs:  # unknown kinds and bad device configs fail before KVM exists
            validate = getattr(registry.get(kind), "validate", None)
            if validate is not None:
                validate(cfg)
        self._phase("plugins", t)

        t = time.monotonic()
        self.kvm = Kvm()
        missing = self.kvm.missing_caps()
        if missing:
            raise KvmError("KVM_CHECK_EXTENSION", 0, "host KVM lacks " + ", ".join(missing))
        self.vm = self.kvm.create_vm()
        self.vm.set_tss_addr(TSS_ADDR)
        self.vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        self.vm.create_irqchip()
        self.vm.create_pit2()
        self._phase("kvm", t)

        t = time.monotonic()
        self.memory = GuestMemory(mc.mem_size_mib << 20)
        self.memory.register(self.vm)
        self._phase("memory", t)

        t = time.monotonic()
        image = kernel_mod.load_kernel(self.memory, bs.kernel_image_path)
        rd = None
        if bs.initrd_path:
            rd = initrd_mod.load_initrd(self.memory, bs.initrd_path, image.load_end,
                                       image.initrd_addr_max)
        self.kernel = image
        self._phase("kernel", t)

        t = time.monotonic()
        self.loop = EventLoop(on_error=lambda e: self.request_exit(
            VmExit(ExitReason.DEVICE_ERROR, f"event loop: {type(e).__name__}: {e}")))
        ctx = DeviceContext(vm_id=self.vm_id, memory=self.memory, pio_bus=self.pio_bus,
                            mmio_bus=self.mmio_bus, event_loop=self.loop,
                            irq_line=self._irq_line, console_out=self.console_out,
                            request_exit=self.request_exit,
                            add_virtio_device=self._add_virtio_device,
                            rate_limiter=limiter_builder(self._plugins.rate_limiter_registry(),
                                                         self.loop))
        self._ctx = ctx
        for n, (kind, cfg) in enumerate(specs):
            name = kind if kind not in self.devices else f"{kind}{n}"
            self.devices[name] = registry.get(kind)(ctx, cfg)
        self._phase("devices", t)

        t = time.monotonic()
        self.cmdline = cmdline_mod.compose(bs.boot_args, ctx.cmdline)
        zeropage.write_boot_params(self.memory, cmdline=self.cmdline.encode(), initrd=rd,
                                   setup_header=image.setup_header, rng_seed=os.urandom(32))
        mptable.write_mptable(self.memory, mc.vcpu_count)
        gdt.write_gdt_idt(self.memory)
        gdt.write_page_tables(self.memory)
        self._phase("boot-data", t)

        t = time.monotonic()
        supported = self.kvm.supported_cpuid()
        pv_off = x86.PVM_KVM_FEATURES_OFF if cmdline_mod.host_is_nested_pvm() else 0
        for i in range(mc.vcpu_count):
            vcpu = self.vm.create_vcpu(i)
            x86.configure_vcpu(vcpu, i, mc.vcpu_count, supported, image.entry,
                               kvm_features_off=pv_off)
            self._vcpus.append(VcpuThread(vcpu, self.pio_bus, self.mmio_bus, self.memory,
                                          self.request_exit))
        self._phase("vcpus", t)

    def _add_virtio_device(self, device, name: str = "virtio") -> VirtioMmioTransport:
        n = len(self.transports)
        if n >= VIRTIO_MAX_DEVICES:
            raise ConfigError(f"too many virtio devices (at most {VIRTIO_MAX_DEVICES})")
        base, irq = VIRTIO_MMIO_BASE + n * V.MMIO_WINDOW, VIRTIO_FIRST_IRQ + n
        t = VirtioMmioTransport(device, memory=self.memory, irq=self._irq_line(irq),
                                event_loop=self.loop, vm=self.vm, base=base, name=name)
        self.mmio_bus.insert(base, V.MMIO_WINDOW, t)
        self._ctx.cmdline.append(f"virtio_mmio.device=4K@{base:#x}:{irq}")
        self.transports.append(t)
        return t

    def _irq_line(self, gsi: int) -> IrqFdLine:
        if not 0 <= gsi < 24:
            raise ConfigError(f"IRQ {gsi} is outside the IOAPIC's 24 pins")
        if gsi not in self._irqs:
            self._irqs[gsi] = IrqFdLine(self.vm, gsi)
        return self._irqs[gsi]

    # -- run ------------------------------------------------------------------
    def request_exit(self, result: VmExit) -> None:
        """Record why the VM ends (first caller wins) and wake `run()`. Any thread."""
        with self._exit_lock:
            if self._exit is None:
                self._exit = result
        self._done.set()

    def stop(self, detail: str = "stop requested") -> None:
        self.request_exit(VmExit(ExitReason.STOPPED, detail))

    def send_ctrl_alt_del(self) -> bool:
        for dev in self.devices.values():
            if hasattr(dev, "send_ctrl_alt_del"):
                dev.send_ctrl_alt_del()
                return True
        return False

    def console_device(self):
        return next((d for d in self.devices.values() if hasattr(d, "console_input")), None)

    def start(self) -> None:
        """Build (if needed) and start the event loop and vCPU threads; returns at once."""
        self.build()
        install_kick_handler()
        self.loop.start()
        console = self.console_device()
        if self.console_in_fd is not None and console is not None:
            from .console import ConsoleInput
            self._console_in = ConsoleInput(self.loop, self.console_in_fd, console.console_input,
                                            on_escape=lambda: self.stop("console escape"),
                                            escape=self.console_escape)
        self.started_at = time.monotonic()
        for v in self._vcpus:
            v.start()

    def wait(self, timeout: float | None = None) -> VmExit | None:
        """Wait until the VM ends; None on timeout. Does not tear down (see `run`)."""
        self._done.wait(timeout)
        return self._exit

    def pause(self) -> None:
        for v in self._vcpus:
            v.pause()
        self.paused = True

    def resume(self) -> None:
        for v in self._vcpus:
            v.resume()
        self.paused = False

    def run(self, timeout: float | None = None) -> VmExit:
        """Start, wait for the end (or `timeout` seconds), tear down; return why it ended."""
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self._done.wait(0.2):
                if deadline is not None and time.monotonic() > deadline:
                    self.stop(f"timeout after {timeout:.1f}s")
        except KeyboardInterrupt:
            self.stop("interrupted")
        return self.shutdown()

    def shutdown(self) -> VmExit:
        """Stop every thread and release all resources; idempotent."""
        if self._exit is None:
            self.stop()
        self.ended_at = time.monotonic()
        self._halt_vcpus()
        self.close()
        return self._exit

    def _halt_vcpus(self) -> None:
        for v in self._vcpus:
            v.kick()
        for v in self._vcpus:
            if not v.join(timeout=2.0):
                v.kick()  # it may have re-entered KVM_RUN between the flag and the signal
                v.join(timeout=2.0)

    # -- figures --------------------------------------------------------------
    def stats(self) -> dict:
        exits: dict[str, int] = {}
        in_kvm = 0.0
        for v in self._vcpus:
            for k, n in v.stats.exits.items():
                exits[k] = exits.get(k, 0) + n
            in_kvm += v.stats.time_in_kvm
        first = self.first_run_at
        return {"exits": exits, "time_in_kvm": in_kvm, "phases": dict(self.phases),
                "first_run_after": (first - self.created_at) if first else None,
                "unhandled_pio": self.pio_bus.unhandled_reads + self.pio_bus.unhandled_writes}

    def close(self) -> None:
        if self.loop is not None:
            self.loop.stop()  # no callback may run while devices close their fds
        for t in self.transports:
            t.close()
        self.transports = []
        if self.loop is not None:
            self.loop.close()
            self.loop = None
        for dev in self.devices.values():
            if hasattr(dev, "close"):
                try:
                    dev.close()
                except Exception:
                    log.exception("closing device failed")
        for v in self._vcpus:
            if v.join(timeout=0):
                v.vcpu.close()
        for irq in self._irqs.values():
            irq.close()
        self._irqs.clear()
        if self.vm is not None:
            self.vm.close()
        if self.memory is not None and all(v.join(timeout=0) for v in self._vcpus):
            self.memory.close()
        if self.kvm is not None:
            self.kvm.close()
        self.vm = self.kvm = self.memory = None


class _NullSink:
    def write(self, data: bytes) -> None:
        pass
