"""Shared fixtures and tier markers (kvm: tiny guests; linux: real Linux boots)."""

import os

import pytest

HAVE_KVM = os.access("/dev/kvm", os.R_OK | os.W_OK)


def pytest_collection_modifyitems(config, items):
    if HAVE_KVM:
        return
    skip = pytest.mark.skip(reason="host has no usable /dev/kvm (needs KVM and root)")
    for item in items:
        if "kvm" in item.keywords or "linux" in item.keywords:
            item.add_marker(skip)
