"""nodesvc_jailer.linux.fork_with: clone(2) with flags, from Python, as the zygote uses it."""

import json
import os
import subprocess
import sys

import pytest

from nodesvc_jailer import linux as L

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="CLONE_NEWPID needs root")

# Run in a child process: with CLONE_PARENT the clone is *our* child (the test's), as a
# VMM is the node service's and not the zygote's.
SCRIPT = r"""
import json, os, sys, threading
from nodesvc_jailer import linux as L
assert L.fork_with_supported()
r, w = os.pipe()
pid = L.fork_with(L.CLONE_PARENT | L.CLONE_NEWPID)
if pid == 0:
    got = []
    t = threading.Thread(target=lambda: got.append(threading.get_native_id()))
    t.start(); t.join()         # threads work in the child (CPython's fork hooks ran)
    os.write(w, json.dumps({"pid": os.getpid(), "tid_field": L._tid_field_here(),
                            "host_pid": int(os.readlink("/proc/self")),
                            "thread": got}).encode())
    os._exit(7)
os.close(w)
child = json.loads(os.read(r, 4096))
try:
    os.waitpid(pid, 0)
    mine = True
except ChildProcessError:
    mine = False
print(json.dumps({"clone": pid, "child": child, "cloner_is_parent": mine}), flush=True)
"""


def test_clone_parent_newpid_child_is_pid_1_and_our_child():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                       timeout=30, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    child = out["child"]
    assert child["pid"] == 1                    # pid 1 of its own namespace
    assert child["tid_field"] is True           # glibc's cached tid is the new one
    assert child["host_pid"] == out["clone"]
    assert child["thread"] and child["thread"][0] > 1
    assert out["cloner_is_parent"] is False     # CLONE_PARENT: the cloner can't reap it
    _, status = os.waitpid(out["clone"], 0)     # we can: it is ours
    assert os.waitstatus_to_exitcode(status) == 7


def test_fork_with_supported_here():
    # Debian 12's glibc: the zygote must take the cloned path on our hosts.
    assert L.fork_with_supported()
