"""Client tests run against a real node service: the server fixtures of tests/service are
reused as they are (imported here so pytest finds them for this folder too)."""

from __future__ import annotations

import pytest

from nodesvc_client import NodeClient
from tests.service.conftest import (  # noqa: F401  (fixtures, re-exported)
    guest, make_server, shared_server, state_dir)


@pytest.fixture(scope="module")
def target(shared_server) -> str:
    return "unix://" + shared_server.socket


@pytest.fixture(scope="module")
def client(target):
    with NodeClient(target, timeout=30) as c:
        yield c


def spec_dict(kernel: str, *, vcpus: int = 1, memory_mib: int = 32,
              boot_args: str = "idle=20000") -> dict:
    """A tiny-guest spec as a friendly dict (what a YAML file holds)."""
    return {"machine": {"vcpus": vcpus, "memory_mib": memory_mib},
            "boot": {"kernel_path": kernel, "boot_args": boot_args}}
