"""Shared fixtures and tier markers (kvm: tiny guests; linux: real Linux boots)."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUEST_OUT = ROOT / "guest" / "out"

HAVE_KVM = os.access("/dev/kvm", os.R_OK | os.W_OK)


def pytest_collection_modifyitems(config, items):
    if HAVE_KVM:
        return
    skip = pytest.mark.skip(reason="host has no usable /dev/kvm (needs KVM and root)")
    for item in items:
        if "kvm" in item.keywords or "linux" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def guest_kernel():
    """guest/out/{vmlinux,initramfs.cpio}, built (and cached) by the guest recipe if absent."""
    vmlinux, initramfs = GUEST_OUT / "vmlinux", GUEST_OUT / "initramfs.cpio"
    if not (vmlinux.exists() and initramfs.exists()):
        subprocess.run(["bash", str(ROOT / "guest" / "build.sh")], check=True)
    return vmlinux, initramfs


@pytest.fixture(scope="session")
def jail_base(tmp_path_factory):
    """Where test VMs' jails live (tiny guests and Linux boots run jailed, as the node runs them; (root, cgroups and mknod are needed: CI is root)."""
    if os.geteuid() != 0:
        pytest.skip("not root: tiny guests run jailed (namespaces, cgroups, mknod)")
    from nodesvc.vmm import zygote
    zygote.warm_up()        # what the zygote imports and compiles, once for the session
    return str(tmp_path_factory.mktemp("jails"))
