"""Tracing pieces without a VM: exporter choice, traceparent checks, the VMM's span records
and the late (boot-timer) spans the node service links to the start's trace."""

from __future__ import annotations

import time

import pytest

from nodesvc import tracing
from nodesvc.vmm import trace
from nodesvc.vmm.devices import DeviceManager

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("flag, env, want", [
    (None, {}, "none"),
    ("console", {}, "console"),
    (None, {"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
    (None, {"OTEL_TRACES_EXPORTER": "zipkin, console"}, "console"),
    ("none", {"OTEL_TRACES_EXPORTER": "otlp"}, "none"),
    ("otlp", {"OTEL_SDK_DISABLED": "true"}, "none"),
])
def test_exporter_choice(flag, env, want):
    assert tracing.exporter_choice(flag, env) == want


def test_setup_off_is_none(monkeypatch):
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert tracing.setup(None) is None and tracing.setup("none") is None


@pytest.mark.parametrize("value, ok", [
    (TP, True),
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", True),
    ("00-00000000000000000000000000000000-b7ad6b7169203331-01", False),
    ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", False),
    ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", False),
    ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", False),
    ("garbage", False), (None, False), (42, False),
])
def test_valid_traceparent(value, ok):
    assert trace.valid_traceparent(value) == (value if ok else None)


class FakeBootTimer:
    def __init__(self):
        self.start, self.boot_time, self.boot_cpu_time = time.monotonic() - 0.5, None, None

    def wait(self, timeout=None):
        time.sleep(0.01)
        self.boot_time, self.boot_cpu_time = 0.25, 0.1
        return self.boot_time


class FakeVm:
    def __init__(self, *devs):
        self.devices = DeviceManager()
        for kind, dev in devs:
            self.devices.add(kind, kind, dev)


def test_boot_watch_event_once_with_the_trace():
    woke = []
    w = trace.BootWatch.start(FakeVm(("serial", object()), ("boot-timer", FakeBootTimer())),
                              lambda: woke.append(1))
    deadline = time.monotonic() + 5
    while not woke and time.monotonic() < deadline:
        time.sleep(0.005)
    ev = w.take_event(TP)
    assert ev["event"] == "boot-timer" and ev["trace"] == TP and ev["boot_time"] == 0.25
    [span] = ev["spans"]
    assert span["name"] == "vmm.boot_timer" and span["end_ns"] - span["start_ns"] == 250_000_000
    assert span["attributes"]["nodesvc.boot_time_us"] == 250_000
    assert w.take_event(TP) is None
    assert trace.BootWatch.start(FakeVm(("serial", object())), lambda: None) is None


def test_late_spans_hang_under_the_given_span():
    t = tracing.Tracing.in_memory()
    now = time.time_ns()
    t.late_spans({"event": "boot-timer", "trace": TP, "spans": [
        {"name": "vmm.boot_timer", "start_ns": now, "end_ns": now + 5,
         "attributes": {"nodesvc.boot_time_us": 1, "bad": {"nested": 1}}},
        {"name": "broken"}]})
    t.late_spans({"event": "boot-timer", "trace": None, "spans": [{"name": "x"}]})
    [s] = t.exporter.get_finished_spans()
    assert s.name == "vmm.boot_timer" and format(s.context.trace_id, "032x") == TP[3:35]
    assert format(s.parent.span_id, "016x") == TP[36:52]
    assert (s.start_time, s.end_time) == (now, now + 5)
    assert dict(s.attributes) == {"nodesvc.boot_time_us": 1}


def test_timeline_uses_the_recorded_phase_times():
    tl = trace.Timeline()
    for m in ("config_start", "config_end", "start_request", "build_start"):
        tl.mark(m)
    t = tl.marks["build_start"]
    vm = type("Vm", (), {"phase_times": {"plugins": (t, t + 0.001), "kvm": (t + 0.001, t + 0.003),
                                         "memory": (t + 0.003, t + 0.006)},
                         "created_at": t, "started_at": None, "first_run_at": None})()
    spans = {s["name"]: s for s in tl.spans(vm)}
    assert spans["vmm.kvm"]["start_ns"] == spans["vmm.plugins"]["end_ns"]
    assert abs(spans["vmm.memory"]["end_ns"] - spans["vmm.memory"]["start_ns"] - 3_000_000) <= 1
    assert "vmm.first_run" not in spans     # not yet run
