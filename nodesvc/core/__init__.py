"""The node service's transport-agnostic core: VM registry, spec validation, state machine,
event log, persistence and VMM supervision. gRPC lives in nodesvc.server, never here."""

from .errors import (AlreadyExists, DomainError, Exhausted, InvalidSpec, NotFound,
                     OutOfRange, Unsupported, WrongState)
from .model import VmRecord, VmState
from .node import Node, NodeConfig

__all__ = ["AlreadyExists", "DomainError", "Exhausted", "InvalidSpec", "Node", "NodeConfig",
           "NotFound", "OutOfRange", "Unsupported", "VmRecord", "VmState", "WrongState"]
