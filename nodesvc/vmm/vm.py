"""`MicroVm`: builds one VM from a validated `VmConfig` and runs it to its end.

Build steps (nodesvc.vmm.builder; each small, in order, timed in `phases` for tracing
and benchmarks): plugins → kvm → memory → kernel → devices → boot data → vcpus. Plugin
hooks run here, during the build, never per exit. Devices live in `devices`, a
DeviceManager keyed by stable `(kind, id)`. `run()` starts the event loop and vCPU
threads and returns the first `VmExit` any of them (or `stop()`) reports.
"""

from __future__ import annotations

import logging
import threading
import time

from ..mmds.vm import for_config as mmds_for_config
from .builder import BOOT_STEPS, RESTORE_STEPS, Builder
from .bus import Bus
from .capabilities import Console, PowerButton
from .devices import DeviceManager
from .exits import ExitReason, VmExit
from .irq import IrqFdLine
from .vcpu import VcpuThread, install_kick_handler
from .virtio import VirtioMmioTransport

log = logging.getLogger("nodesvc.vmm")


class MicroVm:
    """`thread_hooks`: {"vcpu": fn, "loop": fn}, each `fn()` called first thing on every
    thread of that kind, before it runs any guest-driven work (the jail installs its
    per-thread seccomp filters there)."""

    def __init__(self, config, *, vm_id: str = "vm0", console_out=None,
                 console_in_fd: int | None = None, console_escape: bool = False,
                 plugins=None, thread_hooks: dict | None = None):
        self.config, self.vm_id = config, vm_id
        self.console_out = console_out if console_out is not None else _NullSink()
        self.console_in_fd, self.console_escape = console_in_fd, console_escape
        self._plugins = plugins
        self.thread_hooks = dict(thread_hooks or {})
        self.phases: dict[str, float] = {}
        #: phase name -> (start, end) on the time.monotonic() clock, for tracing
        self.phase_times: dict[str, tuple[float, float]] = {}
        self.created_at = time.monotonic()
        self.devices = DeviceManager()
        # MMDS: the store outlives devices; its randomness is drawn now (before a jail)
        self.mmds = mmds_for_config(config, vm_id)
        self.boundaries: dict = {}      # DeviceId -> its ErrorBoundary (failure counts)
        self.cmdline = ""
        self.kernel = None
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
        self.builder: Builder | None = None

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

    def build_from_snapshot(self, memory_factory, load_state) -> None:
        """A restore: the machine (RESTORE_STEPS: no kernel, no boot data, no boot
        registers) with guest memory from `memory_factory(size)`, then
        `load_state(self)` puts the snapshot's vCPU, VM and device state in
        (nodesvc.vmm.snapshot). `start()` then runs it."""
        if self.builder is None:
            self.build(())
        self.builder.memory_factory = memory_factory
        try:
            self.builder.run(*RESTORE_STEPS)
            t0 = time.monotonic()
            load_state(self)
            self._phase("load-state", t0)
        except BaseException:
            self.close()
            raise
        self._built = True

    def build(self, steps: tuple[str, ...] = BOOT_STEPS) -> None:
        """Run the builder's steps not run yet (all of a boot by default; see
        nodesvc.vmm.builder). A jailed VMM plans its devices before the jail closes
        (`build(("plugins",))`, host paths still visible) and builds the rest inside."""
        if self._built:
            return
        if self.builder is None:
            if self._plugins is None:
                from ..plugins import PluginManager
                self._plugins = PluginManager()
            self.builder = Builder(self, self._plugins)
        try:
            self.builder.run(*steps)
        except BaseException:
            self.close()
            raise
        self._built = set(BOOT_STEPS) <= set(self.builder.done)

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
        """True if a power-button device took the request."""
        dev = self.devices.find(PowerButton)
        return dev is not None and dev.send_ctrl_alt_del() is not False

    def console_device(self):
        return self.devices.find(Console)

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
        errors = {str(k): b.failures for k, b in self.boundaries.items() if b.failures}
        return {"exits": exits, "time_in_kvm": in_kvm, "phases": dict(self.phases),
                "device_errors": errors,
                "first_run_after": (first - self.created_at) if first else None,
                "unhandled_pio": self.pio_bus.unhandled_reads + self.pio_bus.unhandled_writes}

    def close(self) -> None:
        if self.loop is not None:
            self.loop.stop()  # no callback may run while devices close their fds
        for t in self.transports:   # their notify fds; the devices close below, once
            t.close()
        self.transports = []
        if self.loop is not None:
            self.loop.close()
            self.loop = None
        self.devices.close()
        for v in self._vcpus:
            v.close()       # only once its thread ended; later kicks then touch nothing
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
