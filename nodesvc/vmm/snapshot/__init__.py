"""Full snapshots of a paused microVM and restores into new VMMs (issue 11).

    info = create_snapshot(vm, state_fd, mem_fd)     # vm paused; files written
    vm2 = restore_vm_from(state_fd, mem_fd, overrides=..., vm_id="clone-1")
    vm2.start()

Files: `format` (the versioned, checksummed state file), `cpu` (vCPU and VM KVM state),
`memfile` (the memory file and its MAP_PRIVATE restore), `devices` (device and transport
state by stable id), `save`, `restore`. See docs/snapshots.md.
"""

from .format import (SnapshotCorrupt, SnapshotError, SnapshotMismatch,  # noqa: F401
                     SnapshotVersionError)
from .restore import load_state, restore_vm_from  # noqa: F401
from .save import create_snapshot  # noqa: F401
from . import files  # noqa: F401  (the jailed VMM imports everything before its jail)
