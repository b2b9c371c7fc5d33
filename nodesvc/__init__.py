"""nodesvc: a gRPC node service running jailed KVM microVMs with a lean Python VMM."""

__version__ = "0.1.0"
