"""vCPU threads: the KVM_RUN loop and exit dispatch to the PIO/MMIO buses.

A vCPU thread never raises: every way out of the loop becomes a `VmExit` handed
to `on_exit`. Stopping: `kick()` sets `immediate_exit` and signals the thread, so
a KVM_RUN in progress returns EINTR and the next one returns at once.
"""

from __future__ import annotations

import collections
import logging
import signal
import struct
import threading
import time
from typing import Callable

from .exits import ExitReason, VmExit
from .kvm import constants as C
from .kvm.abi import ffi

log = logging.getLogger("nodesvc.vmm.vcpu")
KICK_SIGNAL = signal.SIGUSR1
_SIZES = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


def install_kick_handler() -> None:
    """The kick signal needs a handler (ignored signals don't interrupt KVM_RUN)."""
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(KICK_SIGNAL) in (signal.SIG_DFL, signal.SIG_IGN, None):
            signal.signal(KICK_SIGNAL, lambda *_: None)


class VcpuStats:
    def __init__(self) -> None:
        self.exits: collections.Counter[str] = collections.Counter()
        self.time_in_kvm = 0.0
        self.first_run_at: float | None = None


class VcpuThread:
    def __init__(self, vcpu, pio_bus, mmio_bus, memory, on_exit: Callable[[VmExit], None],
                 on_start: Callable[[], None] | None = None):
        self.vcpu, self.pio_bus, self.mmio_bus, self.memory = vcpu, pio_bus, mmio_bus, memory
        self.on_exit = on_exit
        self.on_start = on_start    # first thing on the thread, before KVM_RUN (seccomp)
        self.stats = VcpuStats()
        self._stop = False
        self._paused = self._parked = False
        self._closed = False        # vcpu closed: its kvm_run page is unmapped
        self._park = threading.Condition()
        self._thread = threading.Thread(target=self._main, name=f"vcpu{vcpu.index}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def kick(self) -> None:
        """Stop for good: the loop ends at its next check."""
        with self._park:
            self._stop = True
            self._park.notify_all()
        self._interrupt()

    def pause(self) -> None:
        """Park the thread outside KVM_RUN until `resume()`; returns once it is parked."""
        with self._park:
            self._paused = True
        self._interrupt()
        with self._park:
            self._park.wait_for(lambda: self._parked or self._stop or not self._thread.is_alive(), 2.0)

    def resume(self) -> None:
        with self._park:
            self._paused = False
            self._park.notify_all()

    def _interrupt(self) -> None:
        with self._park:
            if self._closed:
                return      # nothing runs, and kvm_run is unmapped: writing it would fault
            self.vcpu.run_struct.immediate_exit = 1
        ident = self._thread.ident
        if ident is not None and self._thread.is_alive():
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except (ProcessLookupError, OSError):
                pass

    def _wait_while_paused(self) -> None:
        with self._park:
            self._parked = True
            self._park.notify_all()
            self._park.wait_for(lambda: not self._paused or self._stop)
            self._parked = False
        self.vcpu.run_struct.immediate_exit = 0

    def close(self) -> bool:
        """Release the vCPU once its thread has ended (True; False if it still runs).
        Later kicks and pauses become no-ops instead of touching the unmapped kvm_run."""
        with self._park:
            if not self._closed:
                if not self.join(timeout=0):
                    return False
                self._closed = True
                self.vcpu.close()
            return True

    def join(self, timeout: float | None = None) -> bool:
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _main(self) -> None:
        try:
            if self.on_start is not None:
                self.on_start()
            result = self._loop()
        except Exception as e:  # device bugs end the VM cleanly, with the reason
            log.exception("vCPU %d failed", self.vcpu.index)
            result = VmExit(ExitReason.DEVICE_ERROR, f"{type(e).__name__}: {e}", self.vcpu.index)
        if result is not None:
            self.on_exit(result)

    def _loop(self) -> VmExit | None:
        vcpu, run, stats = self.vcpu, self.vcpu.run_struct, self.stats
        buf = memoryview(vcpu.run_buffer)
        pio_read, pio_write = self.pio_bus.read, self.pio_bus.write
        mmio_read, mmio_write = self.mmio_bus.read, self.mmio_bus.write
        exits = stats.exits
        clock = time.perf_counter
        stats.first_run_at = time.monotonic()
        while not self._stop:
            t0 = clock()
            reason = vcpu.run()
            stats.time_in_kvm += clock() - t0
            if reason == C.KVM_EXIT_IO:
                exits["io"] += 1
                io = run.io
                size, port, fmt = io.size, io.port, _SIZES[io.size]
                off = io.data_offset
                if io.direction == C.KVM_EXIT_IO_OUT:
                    for i in range(io.count):
                        pio_write(port, size, struct.unpack_from(fmt, buf, off + i * size)[0])
                else:
                    for i in range(io.count):
                        struct.pack_into(fmt, buf, off + i * size, pio_read(port, size))
            elif reason == C.KVM_EXIT_MMIO:
                exits["mmio"] += 1
                mmio = run.mmio
                n = mmio.len
                if n not in _SIZES:
                    return VmExit(ExitReason.KVM_ERROR, f"MMIO access of {n} bytes at "
                                  f"{mmio.phys_addr:#x}", vcpu.index)
                if mmio.is_write:
                    value = int.from_bytes(ffi.buffer(mmio.data, n), "little")
                    mmio_write(mmio.phys_addr, n, value)
                else:
                    ffi.buffer(mmio.data, n)[:] = mmio_read(mmio.phys_addr, n).to_bytes(n, "little")
            elif reason == C.KVM_EXIT_INTR:
                exits["intr"] += 1
                if self._paused and not self._stop:
                    self._wait_while_paused()
            else:
                exits[C.EXIT_NAMES.get(reason, str(reason))] += 1
                return self._terminal_exit(reason)
        return None

    def _terminal_exit(self, reason: int) -> VmExit:
        run, idx = self.vcpu.run_struct, self.vcpu.index
        if reason == C.KVM_EXIT_SHUTDOWN:
            return VmExit(ExitReason.TRIPLE_FAULT, "KVM_EXIT_SHUTDOWN (triple fault) at "
                          f"rip {self._rip():#x}", idx)
        if reason == C.KVM_EXIT_HLT:
            return VmExit(ExitReason.HALTED, f"HLT at rip {self._rip():#x}", idx)
        if reason == C.KVM_EXIT_SYSTEM_EVENT:
            kind = run.system_event.type
            if kind == C.KVM_SYSTEM_EVENT_RESET:
                return VmExit(ExitReason.GUEST_RESET, "KVM_SYSTEM_EVENT_RESET", idx)
            if kind == C.KVM_SYSTEM_EVENT_SHUTDOWN:
                return VmExit(ExitReason.GUEST_SHUTDOWN, "KVM_SYSTEM_EVENT_SHUTDOWN", idx)
            return VmExit(ExitReason.KVM_ERROR, f"system event {kind}", idx)
        if reason == C.KVM_EXIT_INTERNAL_ERROR:
            return self._internal_error()
        if reason == C.KVM_EXIT_FAIL_ENTRY:
            return VmExit(ExitReason.KVM_ERROR, "KVM_EXIT_FAIL_ENTRY hardware reason "
                          f"{run.fail_entry.hardware_entry_failure_reason:#x}", idx)
        name = C.EXIT_NAMES.get(reason, "?")
        return VmExit(ExitReason.KVM_ERROR, f"unexpected exit {reason} ({name})", idx)

    def _rip(self) -> int:
        try:
            return self.vcpu.get_regs().rip
        except Exception:
            return -1

    def _internal_error(self) -> VmExit:
        run, idx = self.vcpu.run_struct, self.vcpu.index
        sub = run.internal.suberror
        rip = self._rip()
        if sub != C.KVM_INTERNAL_ERROR_EMULATION:
            data = " ".join(f"{run.internal.data[i]:#x}" for i in range(min(run.internal.ndata, 16)))
            return VmExit(ExitReason.KVM_ERROR, f"KVM internal error suberror {sub} at rip "
                          f"{rip:#x} data [{data}]", idx)
        insn = self._instruction_bytes(rip)
        text = " ".join(f"{b:02x}" for b in insn) if insn else "unavailable"
        return VmExit(ExitReason.EMULATION_FAILURE,
                      f"KVM could not emulate the instruction at rip {rip:#x}: bytes [{text}]", idx)

    def _instruction_bytes(self, rip: int) -> bytes:
        ef = self.vcpu.run_struct.emulation_failure
        if ef.ndata >= 2 and ef.flags & C.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES:
            return bytes(ffi.buffer(ef.insn_bytes, min(ef.insn_size, 15)))
        # Older kernels: read the bytes at RIP from guest memory ourselves.
        try:
            gpa = self.vcpu.translate(rip)
            if gpa is not None:
                n = 15
                while n and not self.memory.contains(gpa, n):
                    n -= 1
                return self.memory.read(gpa, n)
        except Exception:
            pass
        return b""
