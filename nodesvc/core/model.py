"""The VM record (what is persisted per VM) and its state machine."""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field


class VmState(str, enum.Enum):
    CREATED = "CREATED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


S = VmState
#: Every legal transition. Anything else is a bug in the core, not a user mistake.
TRANSITIONS: dict[VmState, frozenset[VmState]] = {
    S.CREATED: frozenset({S.STARTING}),
    # STARTING may end at once: a guest that resets in microseconds, or a VMM that fails.
    S.STARTING: frozenset({S.RUNNING, S.STOPPING, S.STOPPED, S.FAILED}),
    S.RUNNING: frozenset({S.PAUSED, S.STOPPING, S.STOPPED, S.FAILED}),
    S.PAUSED: frozenset({S.RUNNING, S.STOPPING, S.STOPPED, S.FAILED}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED}),
    S.STOPPED: frozenset({S.STARTING}),
    S.FAILED: frozenset({S.STARTING}),
}
#: States in which a VMM process exists (and holds the VM's memory and vCPUs).
ACTIVE = frozenset({S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING})
#: States from which StartVm / DeleteVm are allowed.
STARTABLE = DELETABLE = frozenset({S.CREATED, S.STOPPED, S.FAILED})


@dataclass
class VmmInfo:
    """Enough to find a VMM process again after the node service restarts."""
    pid: int
    start_time: int     # /proc/<pid>/stat starttime: guards against pid reuse
    run_dir: str


@dataclass
class VmRecord:
    id: str
    spec: dict                  # normalized spec (nodesvc.core.spec), proto JSON field names
    labels: dict[str, str] = field(default_factory=dict)
    state: VmState = VmState.CREATED
    reason: str = ""
    created_at: float = field(default_factory=time.time)
    state_changed_at: float = field(default_factory=time.time)
    revision: int = 0
    start_count: int = 0
    metadata: str = "{}"        # the metadata document (JSON text)
    vmm: VmmInfo | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_json(cls, d: dict) -> "VmRecord":
        d = dict(d)
        d["state"] = VmState(d["state"])
        d["vmm"] = VmmInfo(**d["vmm"]) if d.get("vmm") else None
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})

    def matches(self, selector: dict[str, str] | None) -> bool:
        return all(self.labels.get(k) == v for k, v in (selector or {}).items())
