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
