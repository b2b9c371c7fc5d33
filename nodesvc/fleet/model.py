"""The fleet's keys in etcd and the JSON records under them (docs/fleet.md, "Keys").

    <prefix>nodes/<node>      NodeRecord, put under the node's lease (gone when it expires)
    <prefix>nodeconf/<node>   NodeConf: cordoned / draining (set by operators, not leased)
    <prefix>vms/<id>          Desired: what should run (spec, labels, placement)
    <prefix>assign/<id>       Assignment: which node runs it, under that node's lease
    <prefix>status/<id>       Observed: what the assigned node reports (written by the leader)
    <prefix>leader            the leading controller, under its lease
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields

DEFAULT_PREFIX = "/nodesvc/fleet/"
#: Labels the controller puts on the node-level VMs it creates.
LABEL_FLEET = "fleet.nodesvc/id"            # the fleet VM id (== the node VM id)
LABEL_ASSIGNMENT = "fleet.nodesvc/assignment"  # create_revision of the assignment key
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")

RUN, RELEASE = "run", "release"


class Keys:
    def __init__(self, prefix: str = DEFAULT_PREFIX):
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        p = self.prefix
        self.nodes, self.nodeconf, self.vms = p + "nodes/", p + "nodeconf/", p + "vms/"
        self.assign, self.status, self.leader = p + "assign/", p + "status/", p + "leader"

    def node(self, name: str) -> str:
        return self.nodes + name

    def conf(self, name: str) -> str:
        return self.nodeconf + name

    def vm(self, vm_id: str) -> str:
        return self.vms + vm_id

    def assignment(self, vm_id: str) -> str:
        return self.assign + vm_id

    def state(self, vm_id: str) -> str:
        return self.status + vm_id

    def split(self, key: str) -> tuple[str, str]:
        """'<prefix>vms/web-1' -> ('vms', 'web-1'); ('leader', '') for the leader key."""
        rest = key[len(self.prefix):]
        kind, _, name = rest.partition("/")
        return kind, name


class Record:
    """JSON (de)serialisation that ignores unknown fields (newer writers)."""

    def dump(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def load(cls, data: bytes):
        d = json.loads(data)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class NodeRecord(Record):
    name: str
    endpoint: str                   # gRPC target of the node service (unix:///... or host:port)
    lease: int = 0
    labels: dict = field(default_factory=dict)
    cpus: int = 0
    memory_mib: int = 0             # allocatable (host minus reserve)
    cpu_overcommit: float = 1.0     # the node's own rule
    other_memory_mib: int = 0       # held by VMs the fleet does not manage
    other_vcpus: int = 0
    versions: dict = field(default_factory=dict)
    registered_at: float = 0.0


@dataclass
class NodeConf(Record):
    cordoned: bool = False          # take no new VMs
    draining: bool = False          # and move the ones it has


@dataclass
class Placement(Record):
    node_selector: dict = field(default_factory=dict)   # node labels that must all match
    anti_affinity: list = field(default_factory=list)   # VM label keys: one value per node
    spread_by: str = ""             # node label whose values are the spread domains ("" = node)
    spread_match: list = field(default_factory=list)    # VM label keys defining the group

    @classmethod
    def of(cls, d: dict | None) -> "Placement":
        d = d or {}
        p = cls(**{k: d[k] for k in ("node_selector", "anti_affinity", "spread_by",
                                     "spread_match") if k in d})
        if not isinstance(p.node_selector, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in p.node_selector.items()):
            raise ValueError("placement.node_selector: want a map of strings")
        for name in ("anti_affinity", "spread_match"):
            v = getattr(p, name)
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ValueError(f"placement.{name}: want a list of label keys")
        if not isinstance(p.spread_by, str):
            raise ValueError("placement.spread_by: want a node label key")
        return p


@dataclass
class Desired(Record):
    id: str
    spec: dict                      # a nodesvc.v1.VmSpec as proto JSON
    labels: dict = field(default_factory=dict)
    placement: dict = field(default_factory=dict)
    created_at: float = 0.0

    @property
    def memory_mib(self) -> int:
        return int(self.spec.get("machine", {}).get("memoryMib", 0))

    @property
    def vcpus(self) -> int:
        return int(self.spec.get("machine", {}).get("vcpus", 0))


@dataclass
class Assignment(Record):
    node: str
    lease: int                      # the node's lease this key is bound to
    phase: str = RUN                # RUN, or RELEASE: the node stops it, then deletes this key
    placed_at: float = 0.0
    leader: int = 0                 # the controller term (leader key revision) that placed it


@dataclass
class Observed(Record):
    node: str
    state: str                      # the node's VmState name without the prefix, or "MISSING"
    reason: str = ""
    assignment: int = 0             # the assignment revision this observation is about
    node_revision: int = 0          # the node's event revision
    time: float = 0.0
