"""What the host can hold: memory (minus a reserve for the host) and vCPUs (overcommitted)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..vmm.config import host_mem_total
from .errors import Exhausted


@dataclass
class Capacity:
    cpus: int
    memory_mib: int             # total the node may consider (host MemTotal unless overridden)
    reserve_mib: int = 256      # kept for the host, the node service and VMM overheads
    cpu_overcommit: float = 4.0  # vCPUs per host CPU

    @classmethod
    def detect(cls, *, memory_mib: int | None = None, reserve_mib: int = 256,
               cpu_overcommit: float = 4.0) -> "Capacity":
        if memory_mib is None:
            memory_mib = (host_mem_total() or 0) >> 20
        return cls(os.cpu_count() or 1, memory_mib, reserve_mib, cpu_overcommit)

    @property
    def allocatable_mib(self) -> int:
        return max(0, self.memory_mib - self.reserve_mib)

    @property
    def vcpu_limit(self) -> int:
        return int(self.cpus * self.cpu_overcommit)

    def check(self, vm_id: str, mem_mib: int, vcpus: int, used_mib: int, used_vcpus: int) -> None:
        """Raise Exhausted unless a VM of this size fits next to what already runs."""
        if used_mib + mem_mib > self.allocatable_mib:
            raise Exhausted(
                f"VM {vm_id} needs {mem_mib} MiB but only {self.allocatable_mib - used_mib} MiB "
                f"of {self.allocatable_mib} MiB are free (host {self.memory_mib} MiB minus "
                f"{self.reserve_mib} MiB reserve)")
        if used_vcpus + vcpus > self.vcpu_limit:
            raise Exhausted(
                f"VM {vm_id} needs {vcpus} vCPUs but only {self.vcpu_limit - used_vcpus} of "
                f"{self.vcpu_limit} are free ({self.cpus} CPUs x {self.cpu_overcommit:g} "
                "overcommit)")
