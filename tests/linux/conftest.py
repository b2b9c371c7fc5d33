"""Real Linux boots of the default guest (about a minute each on nested KVM)."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUEST_OUT = ROOT / "guest" / "out"


@pytest.fixture(scope="session")
def guest_kernel():
    """guest/out/{vmlinux,initramfs.cpio}, built (and cached) by the guest recipe if absent."""
    vmlinux, initramfs = GUEST_OUT / "vmlinux", GUEST_OUT / "initramfs.cpio"
    if not (vmlinux.exists() and initramfs.exists()):
        subprocess.run(["bash", str(ROOT / "guest" / "build.sh")], check=True)
    return vmlinux, initramfs
