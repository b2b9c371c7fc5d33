"""The MMDS data path under the VMM's seccomp filter: the thread that runs the net device
(TX detour, stack, RX injection, the MMDS timer) loads the jail's "loop" filter first, as
a jailed VMM's event-loop thread does, and then serves curl/urllib clients through the
GuestBridge. A syscall outside the filter kills the process (exit 148) and names itself
in the report file, so "no new syscalls" is checked, not assumed.

It runs in a forked child (a filter can never be removed); the parent is the client side.
Needs root and the jailer's libseccomp binding.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request

import pytest

from tests.net.test_mmds_device import DOC, FEATURES, MMDS_IP

seccomp = pytest.importorskip("nodesvc_jailer.seccomp",
                              reason="the jailer (nodesvc_jailer, libseccomp) is not installed")
CURL = shutil.which("curl")


def _child(report_fd: int, to_parent: int, from_parent: int) -> int:
    from nodesvc.mmds.config import MmdsConfig
    from nodesvc.mmds.vm import VmMmds
    from nodesvc_virtio_net.testing import GuestBridge, NetRig
    seccomp.arm(report_fd)
    vm_mmds = VmMmds(MmdsConfig(("eth0",), "V2"), "jailed-vm")   # randomness: before the filter
    vm_mmds.mmds.put(DOC)
    rig = NetRig(features=FEATURES, mmds_stack=vm_mmds.stack_factory("eth0"))
    try:
        bridge = GuestBridge(rig, on_start=lambda: seccomp.install("loop"))
        rig.closers.append(bridge.close)
        bridge.route(f"{MMDS_IP}/32")
        bridge.start()
        os.write(to_parent, bridge.ns.name.encode() + b"\n")
        os.read(from_parent, 1)                  # the parent's clients are done
        return 0 if bridge.thread.is_alive() and bridge.error is None else 3
    finally:
        rig.close()


def test_mmds_serves_under_the_loop_thread_filter(tmp_path):
    report = tmp_path / "sigsys"
    rfd = os.open(report, os.O_WRONLY | os.O_CREAT, 0o600)
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(up_r)
            os.close(down_w)
            code = _child(rfd, up_w, down_r)
        finally:
            os._exit(code)
    os.close(rfd)
    os.close(up_w)
    os.close(down_r)
    try:
        with os.fdopen(up_r, "rb") as f:
            ns = f.readline().decode().strip()
        assert ns, f"the child died before serving: {report.read_text()!r}"

        def get(path, method="GET", headers=None):
            from nodesvc.net.netns import run_in_netns

            def call():
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                req = urllib.request.Request(f"http://{MMDS_IP}{path}", method=method,
                                             headers=headers or {})
                with opener.open(req, timeout=10) as r:
                    return r.read()
            return run_in_netns(ns, call)

        token = get("/latest/api/token", "PUT", {"X-metadata-token-ttl-seconds": "60"})
        got = get("/latest", headers={"X-metadata-token": token.decode(),
                                      "Accept": "application/json"})
        assert json.loads(got) == DOC["latest"]
        if CURL:
            r = subprocess.run(["ip", "netns", "exec", ns, CURL, "-sS", "--noproxy", "*", "-m",
                                "10", "-H", f"X-metadata-token: {token.decode()}",
                                f"http://{MMDS_IP}/latest/meta-data/ami-id"],
                               capture_output=True, text=True, timeout=20)
            assert r.stdout == "ami-0abc", r.stderr
    finally:
        os.write(down_w, b"x")
        os.close(down_w)
        _, status = os.waitpid(pid, 0)
    assert report.read_text() == "" and os.waitstatus_to_exitcode(status) == 0, \
        (os.waitstatus_to_exitcode(status), report.read_text())
