"""Per-VM uid/gid numbers from a configured range, never shared by two live VMs.

One lock file per number in a state directory, made with O_CREAT|O_EXCL (atomic, so two
node processes can't both win) and holding the VM id. The files outlive a node restart,
so a restarted node never hands out the number of a VM it re-adopts; `Jail.cleanup`
releases a number only after the VM's processes and cgroup are gone, and `sweep`
releases the numbers of VMs that no longer exist. uid and gid are the same number.
"""

from __future__ import annotations

import os

DEFAULT_RANGE = (900_000, 999_999)   # far above login and system users


class UidExhausted(RuntimeError):
    pass


class UidAllocator:
    def __init__(self, state_dir: str, first: int = DEFAULT_RANGE[0],
                 last: int = DEFAULT_RANGE[1]):
        if not 0 < first <= last < 2**32 - 1:
            raise ValueError(f"bad uid range {first}-{last}")
        self.dir, self.first, self.last = state_dir, first, last
        os.makedirs(state_dir, mode=0o700, exist_ok=True)

    def _path(self, uid: int) -> str:
        return os.path.join(self.dir, f"{uid}.uid")

    def allocate(self, vm_id: str) -> int:
        """A number no live VM holds; the same one again for a VM that already has one."""
        held = self.owned()
        for uid, owner in held.items():
            if owner == vm_id:
                return uid
        # Start after the highest number in use: a just-released number is not handed out
        # again at once (a straggling process of the old VM is not confused with the new).
        start = max(held, default=self.first - 1) + 1
        span = self.last - self.first + 1
        for i in range(span):
            uid = self.first + (start - self.first + i) % span
            try:
                fd = os.open(self._path(uid), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as f:
                f.write(vm_id)
            return uid
        raise UidExhausted(f"every uid in {self.first}-{self.last} is held by a live VM")

    def owned(self) -> dict[int, str]:
        """uid -> VM id of every number held now."""
        out = {}
        for name in os.listdir(self.dir):
            if not name.endswith(".uid"):
                continue
            try:
                uid = int(name[:-4])
                with open(os.path.join(self.dir, name)) as f:
                    out[uid] = f.read().strip()
            except (ValueError, OSError):
                continue
        return out

    def uid_of(self, vm_id: str) -> int | None:
        return next((u for u, v in self.owned().items() if v == vm_id), None)

    def release(self, vm_id: str) -> None:
        """Give back whatever `vm_id` holds (idempotent)."""
        for uid, owner in self.owned().items():
            if owner == vm_id:
                try:
                    os.unlink(self._path(uid))
                except FileNotFoundError:
                    pass

