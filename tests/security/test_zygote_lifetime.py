"""The zygote lives exactly as long as its node service: a node killed outright leaves no
zygote behind (its VMMs are not the zygote's to keep: the node is their subreaper)."""

import os
import signal
import time

import pytest

pytestmark = [pytest.mark.jail]


def _zygotes(state_dir: str) -> list[int]:
    marker = os.fsencode(os.path.join(state_dir, "zygote.sock"))
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if b"nodesvc.vmm.zygote" in cmd and marker in cmd:
                out.append(int(d))
    return out


def test_a_killed_node_takes_its_zygote_along(make_server):
    s = make_server()
    (zygote,) = _zygotes(s.state_dir)
    os.kill(s.proc.pid, signal.SIGKILL)
    s.proc.wait(10)
    deadline = time.monotonic() + 10
    while _zygotes(s.state_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _zygotes(s.state_dir) == [], f"zygote {zygote} outlived its node service"
