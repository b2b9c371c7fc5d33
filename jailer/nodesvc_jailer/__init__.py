"""nodesvc's jailer: confine one VMM process (see jail.py and docs/security.md)."""

from .cgroup import CgroupError, Limits
from .cleanup import cleanup, fault_syscall, memory_limit_hit, read_fault, sweep
from .fdpass import recv_fds, send_fds
from .jail import Jail, JailError, validate_id
from .uids import UidAllocator

__all__ = ["Jail", "JailError", "Limits", "CgroupError", "UidAllocator", "cleanup", "sweep",
           "read_fault", "fault_syscall", "memory_limit_hit", "send_fds", "recv_fds", "validate_id"]
