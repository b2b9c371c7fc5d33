"""`nodesvc-jailer ... -- cmd`: exec mode with read-only binds, then --cleanup."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nodesvc_jailer import cgroup as cg

pytestmark = pytest.mark.jail
JAILER = os.path.join(os.path.dirname(sys.executable), "nodesvc-jailer")


def test_cli_runs_a_command_as_pid_1_unprivileged_and_cleans_up(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("not root (namespaces, cgroups and mknod need it)")
    parent = f"nodesvc-test-cli-{os.getpid()}"
    common = ["--chroot-base-dir", str(tmp_path / "j"), "--uid-state-dir",
              str(tmp_path / "uids"), "--parent-cgroup", parent]
    binds = [a for p in ("/bin", "/usr", "/lib", "/lib64") if os.path.exists(p)
             for a in ("--ro-bind", p)]
    try:
        r = subprocess.run([JAILER, "--id", "cli-1", *common, "--pids", "8", "--memory-mib",
                            "64", "--resource-limit", "no-file=64", "--new-pid-ns", *binds,
                            "--", "/bin/sh", "-c",
                            "echo $$ $(id -u) $(ulimit -n); ls /dev; touch /usr/x 2>&1; "
                            "exit 7"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 7, r.stderr
        first, *rest = r.stdout.splitlines()
        pid, uid, nofile = first.split()
        assert pid == "1" and int(uid) >= 900000 and nofile == "64"
        assert rest[:3] == ["kvm", "net", "urandom"]
        assert "Read-only file system" in r.stdout
        bad = subprocess.run([JAILER, "--id", "../x", *common, "--", "/bin/true"],
                             capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and "invalid VM id" in bad.stderr
    finally:
        c = subprocess.run([JAILER, "--cleanup", "cli-1", *common], capture_output=True,
                           text=True, timeout=30)
        for _, d, _ in cg.read_mounts():
            if os.path.isdir(os.path.join(d, parent)):
                os.rmdir(os.path.join(d, parent))
    assert c.returncode == 0 and '"left": {}' in c.stdout
    assert not os.path.exists(tmp_path / "j" / "cli-1") and os.listdir(tmp_path / "uids") == []
