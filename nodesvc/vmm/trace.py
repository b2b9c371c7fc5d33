"""Phase timings of a VMM run, as plain span records (no OpenTelemetry in the VMM process).

The VMM stays lean: it never imports opentelemetry. It records when each step of its run
began and ended and hands the records to the node service (in the `start` reply, and in a
`boot-timer` event later), which turns them into OTel spans under the RPC that caused them.

    {"name": "vmm.kernel", "start_ns": 1700000000123456789, "end_ns": ..., "attributes": {}}

Times are wall-clock nanoseconds since the epoch (what OTel spans carry), converted from
the monotonic clock the VMM measures with, so the node service can place them next to its
own spans without knowing our clock.
"""

from __future__ import annotations

import re
import threading
import time

from .capabilities import BootClock

# W3C Trace Context: version-traceid-parentid-flags, lowercase hex; all-zero ids are invalid.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

#: MicroVm.phases names -> span names, in build order ("plugins" validates device configs).
BUILD_PHASES = (("plugins", "vmm.plugins"), ("kvm", "vmm.kvm"), ("memory", "vmm.memory"),
                ("kernel", "vmm.kernel"), ("devices", "vmm.devices"),
                ("boot-data", "vmm.boot_data"), ("vcpus", "vmm.vcpus"))


def valid_traceparent(value) -> str | None:
    """`value` if it is a well-formed W3C traceparent, else None (never trust the wire)."""
    if not isinstance(value, str):
        return None
    m = _TRACEPARENT.match(value)
    if m is None or m.group(1) == "ff" or set(m.group(2)) == {"0"} or set(m.group(3)) == {"0"}:
        return None
    return value


def trace_id(traceparent: str | None) -> str | None:
    return traceparent.split("-")[1] if traceparent else None


class Timeline:
    """Monotonic marks of one VMM run, turned into span records on demand."""

    def __init__(self):
        self.marks: dict[str, float] = {"main": time.monotonic()}

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic()

    def spans(self, vm=None) -> list[dict]:
        off = time.time_ns() - time.monotonic_ns()     # one offset: spans stay consistent
        out: list[dict] = []

        def add(name: str, t0: float | None, t1: float | None, **attrs) -> None:
            if t0 is not None and t1 is not None:
                out.append({"name": name, "start_ns": int(t0 * 1e9) + off,
                            "end_ns": int(max(t0, t1) * 1e9) + off, "attributes": attrs})

        m = self.marks
        # "spawn" starts on the node side (before exec); the node service fills that end in.
        add("vmm.spawn", m["main"], m["main"])
        add("vmm.config", m.get("config_start"), m.get("config_end"))
        add("vmm.jail", m.get("jail_start"), m.get("jail_end"))     # a jailed VMM only
        add("vmm.handshake", m.get("ready", m.get("config_end")), m.get("start_request"))
        add("vmm.imports", m.get("start_request"), m.get("build_start"))   # the VMM core
        if vm is not None:
            for name, t0, t1 in _build_phases(vm):
                add(name, t0, t1)
            started, first = getattr(vm, "started_at", None), first_run_at(vm)
            add("vmm.first_run", started, first)
        # A jailed VMM plans its devices before the jail closes, so "vmm.plugins" comes
        # before the jail and the handshake: order by time, not by kind.
        return sorted(out, key=lambda s: s["start_ns"])


def _build_phases(vm):
    """(span name, t0, t1) per build phase, from MicroVm.phase_times."""
    for key, name in BUILD_PHASES:
        if key in vm.phase_times:
            t0, t1 = vm.phase_times[key]
            yield name, t0, t1


def first_run_at(vm) -> float | None:
    """Monotonic time of the first KVM_RUN of any vCPU, None before it."""
    return vm.first_run_at


def wait_first_run(vm, timeout: float = 0.25) -> float | None:
    """Wait (briefly) for the guest's first instruction, so `start` means "running"."""
    deadline = time.monotonic() + timeout
    while (at := first_run_at(vm)) is None and time.monotonic() < deadline:
        time.sleep(0.0002)
    return at


class BootWatch:
    """Waits in a thread for the VM's boot clock (a BootClock device) to fire, then calls
    `wake()`; the VMM's main loop then sends `take_event()` out."""

    def __init__(self, dev, wake):
        self.dev, self.wake, self.sent = dev, wake, False

    @classmethod
    def start(cls, vm, wake) -> "BootWatch | None":
        dev = vm.devices.find(BootClock)
        if dev is None:
            return None
        w = cls(dev, wake)
        threading.Thread(target=w._wait, name="boot-wait", daemon=True).start()
        return w

    def _wait(self) -> None:
        self.dev.wait()
        self.wake()

    def take_event(self, traceparent: str | None) -> dict | None:
        """The `boot-timer` event, once, after the guest signalled; it carries the trace
        context so the node service can link it even after a restart."""
        if self.sent or self.dev.boot_time is None:
            return None
        self.sent = True
        span = boot_timer_span(self.dev)
        return {"event": "boot-timer", "boot_time": self.dev.boot_time, "trace": traceparent,
                "spans": [span] if span else []}


def boot_timer_span(dev) -> dict | None:
    """vmm.boot_timer: from the device's clock start to the guest's "booted" write."""
    if dev.boot_time is None:
        return None
    off = time.time_ns() - time.monotonic_ns()
    t0 = int(dev.start * 1e9) + off
    return {"name": "vmm.boot_timer", "start_ns": t0, "end_ns": t0 + int(dev.boot_time * 1e9),
            "attributes": {"nodesvc.boot_time_us": int(dev.boot_time * 1e6),
                           "nodesvc.boot_cpu_time_us": int((dev.boot_cpu_time or 0) * 1e6)}}
