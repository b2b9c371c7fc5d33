"""Prometheus /metrics on a real node service (`--metrics-listen`), scraped over real HTTP
and parsed with prometheus-client's own text parser."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodesvc.api.v1 import nodesvc_pb2 as pb
from tests.service.conftest import ROOT, vm_spec, wait_state

pytestmark = pytest.mark.kvm
ST = pb.VmState


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def eventually(fn, timeout: float = 20.0):
    """fn() until it returns something truthy, within a bound (an event we can only poll)."""
    deadline = time.monotonic() + timeout
    while not (got := fn()):
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)
    return got


def test_scrape_counts_vms_vmm_runs_exits_and_rpcs(make_server, guest):
    port = free_port()
    s = make_server("--metrics-listen", f"127.0.0.1:{port}")
    stub = s.stub
    before = scrape(port)
    assert value(before, "nodesvc_vms", state="running") == 0
    assert value(before, "nodesvc_vmm_starts_total") == 0

    vm = stub.CreateVm(pb.CreateVmRequest(vm_id="m1", spec=vm_spec(guest("echo")), start=True),
                       timeout=30).vm
    assert vm.state == ST.VM_STATE_RUNNING, vm.reason
    stub.CreateVm(pb.CreateVmRequest(vm_id="m2", spec=vm_spec(guest("echo"))), timeout=30)
    with pytest.raises(grpc.RpcError) as e:
        stub.GetVm(pb.GetVmRequest(vm_id="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    for _ in range(3):
        stub.GetVm(pb.GetVmRequest(vm_id="m1"))

    # the VMM writes a metrics record every 0.3 s (the fixture's --vmm-metrics-interval)
    got = eventually(lambda: (m := scrape(port)) and
                     (value(m, "nodesvc_vm_exits_total", vm_id="m1", kind="io") or 0) > 0 and m)
    assert value(got, "nodesvc_vms", state="running") == 1
    assert value(got, "nodesvc_vms", state="created") == 1
    assert value(got, "nodesvc_vmm_starts_total") == 1
    assert value(got, "nodesvc_vmm_failures_total") == 0
    assert value(got, "nodesvc_vm_kvm_seconds_total", vm_id="m1") > 0
    assert value(got, "nodesvc_vm_console_bytes_total", vm_id="m1") >= len("READY")
    assert value(got, "nodesvc_vm_console_dropped_bytes_total", vm_id="m1") == 0
    assert value(got, "nodesvc_vm_log_dropped_lines_total", vm_id="m1") == 0
    assert value(got, "nodesvc_vm_exits_total", vm_id="m2", kind="io") is None  # never ran

    assert value(got, "nodesvc_grpc_requests_total", method="GetVm", code="NOT_FOUND") == 1
    assert value(got, "nodesvc_grpc_requests_total", method="GetVm", code="OK") == 3
    assert value(got, "nodesvc_grpc_requests_total", method="CreateVm", code="OK") == 2
    assert value(got, "nodesvc_grpc_request_duration_seconds_count", method="GetVm") == 4
    assert value(got, "nodesvc_grpc_request_duration_seconds_bucket", method="GetVm",
                 le="+Inf") == 4
    assert value(got, "nodesvc_grpc_request_duration_seconds_sum", method="CreateVm") > 0

    os.kill(vm.vmm_pid, signal.SIGKILL)
    wait_state(stub, "m1", ST.VM_STATE_FAILED, timeout=30)
    after = eventually(lambda: (m := scrape(port)) and
                       value(m, "nodesvc_vmm_failures_total") == 1 and m)
    assert value(after, "nodesvc_vms", state="failed") == 1
    assert value(after, "nodesvc_vms", state="running") == 0
    # the last record of the run that ended is still what the VM reports
    assert value(after, "nodesvc_vm_exits_total", vm_id="m1", kind="io") > 0


def test_metrics_are_off_by_default_and_a_bad_address_is_refused(state_dir):
    r = subprocess.run([sys.executable, "-m", "nodesvc.server.main", "serve", "--state-dir",
                        state_dir, "--metrics-listen", "localhost"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--metrics-listen 'localhost': expected HOST:PORT" in r.stderr
    # off by default: the server module never imports prometheus-client
    code = ("import sys, nodesvc.server.main, nodesvc.server.app; "
            "assert 'prometheus_client' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
