"""Operations on a VM's devices, console, logs and metadata (mixed into `Node`).

Live device changes on a stopped VM just edit its spec (they apply at the next start); on a
running VM they go to the VMM as typed actions (nodesvc.vmm.actions), which its hello must
list as supported.
"""

from __future__ import annotations

import json
import os
from typing import AsyncIterator

from ..vmm import actions
from . import metadata as md
from . import spec as specs
from .errors import InvalidSpec, NotFound, Unsupported, WrongState
from .events import UPDATED
from .model import ACTIVE, VmState

S = VmState


class LiveOps:
    async def _live_change(self, e, action: actions.Action, what: str,
                           files: dict | None = None) -> None:
        if e.rec.state not in ACTIVE:
            return
        if e.handle is not None and not e.handle.supports(type(action)):
            raise Unsupported(f"{what} on a running VM is not supported by this VMM yet; "
                              f"stop VM {e.rec.id} first (the change applies at the next start)")
        await self._vmm_op(e, action, files)

    async def update_drive(self, vm_id: str, drive_id: str, path_on_host: str):
        e = self.entry(vm_id)
        async with e.lock:
            drives = {d["drive_id"]: d for d in e.rec.spec["drives"]}
            if drive_id not in drives:
                have = ", ".join(sorted(drives)) or "none"
                raise NotFound(f"VM {vm_id} has no drive {drive_id!r} (drives: {have})")
            path = _host_path(path_on_host)
            files = {}
            if self.launcher.jailed and e.rec.state in ACTIVE:  # the jail opens nothing itself
                ro = bool(drives[drive_id].get("is_read_only"))
                try:
                    files[path] = os.open(path, (os.O_RDONLY if ro else os.O_RDWR)
                                          | os.O_CLOEXEC)
                except OSError as err:
                    raise InvalidSpec("path_on_host", f"cannot open {path!r}: "
                                                      f"{err.strerror}") from None
            try:
                await self._live_change(e, actions.UpdateDrive(drive_id, path), "drive update",
                                        files)
            finally:
                for fd in files.values():
                    os.close(fd)
            drives[drive_id]["path_on_host"] = path
            self._commit(e, UPDATED, e.rec.state)
            return e.rec

    async def update_rate_limiter(self, vm_id: str, device_id: str, limiter: dict | None):
        e = self.entry(vm_id)
        async with e.lock:
            ids = specs.device_ids(e.rec.spec)
            if device_id not in ids:
                have = ", ".join(sorted(ids)) or "none"
                raise NotFound(f"VM {vm_id} has no rate-limited device {device_id!r} "
                               f"(devices: {have})")
            rl = specs.rate_limiter(limiter, "rate_limiter")
            # On a running device "no limiter" means both buckets disabled (size 0).
            off = {"size": 0, "one_time_burst": 0, "refill_time": 0}
            fc = specs.fc_limiter(rl) if rl is not None else {"bandwidth": off, "ops": off}
            await self._live_change(e, actions.UpdateRateLimiter(device_id, fc),
                                    "rate limiter replacement")
            kind = ids[device_id]
            if kind == "drive":
                dev = next(d for d in e.rec.spec["drives"] if d["drive_id"] == device_id)
                key = "rate_limiter"
            elif kind == "entropy":
                dev, key = e.rec.spec["entropy"], "rate_limiter"
            else:
                iface = device_id.rsplit("/", 1)[0]
                dev = next(i for i in e.rec.spec["network_interfaces"] if i["iface_id"] == iface)
                key = "rx_rate_limiter" if kind == "net-rx" else "tx_rate_limiter"
            if rl is None:
                dev.pop(key, None)
            else:
                dev[key] = rl
            self._commit(e, UPDATED, e.rec.state)
            return e.rec

    # -- console --------------------------------------------------------------------------
    async def console_stream(self, vm_id: str, include_history: bool = False
                             ) -> AsyncIterator[tuple[bytes, int]]:
        """(data, dropped bytes) until the VMM process ends."""
        e = self.entry(vm_id)
        async for items, dropped in e.console.subscribe(include_history):
            yield b"".join(items), dropped

    async def console_input(self, vm_id: str, data: bytes) -> int:
        e = self.entry(vm_id)
        if e.rec.state not in (S.RUNNING, S.PAUSED) or e.handle is None:
            raise WrongState(f"cannot send console input to VM {vm_id}: it is "
                             f"{e.rec.state.value} (needs RUNNING or PAUSED)")
        return (await self._vmm_op(e, actions.ConsoleInput(data))).accepted

    async def logs_stream(self, vm_id: str, include_history: bool = False,
                          kinds: frozenset[str] = frozenset({"log", "metrics"})
                          ) -> AsyncIterator[tuple[list[dict], int]]:
        e = self.entry(vm_id)
        async for items, dropped in e.logs.subscribe(include_history):
            yield [r for r in items if r.get("kind") in kinds], dropped

    # -- metadata -------------------------------------------------------------------------
    def get_metadata(self, vm_id: str) -> str:
        return self.entry(vm_id).rec.metadata

    async def put_metadata(self, vm_id: str, text: str) -> str:
        return await self._set_metadata(vm_id, lambda cur: md.put(text))

    async def patch_metadata(self, vm_id: str, text: str) -> str:
        return await self._set_metadata(vm_id, lambda cur: md.patch(cur, text))

    async def _first_metadata(self, e, h) -> None:
        """Before Start: the VMM's store gets the node's document, so the guest never sees
        an empty one. Sent as an action, the same way live updates go (no file to hand
        into the jail); the VMM is READY, so no vCPU runs until it is in."""
        if e.rec.metadata and h.supports(actions.PutMetadata):
            await h.call(actions.PutMetadata(json.loads(e.rec.metadata)), timeout=10.0)

    async def _set_metadata(self, vm_id: str, change) -> str:
        e = self.entry(vm_id)
        async with e.lock:
            doc = change(e.rec.metadata)
            # A running VMM gets the whole new document at once (a PATCH too: the node's
            # copy is the truth, so the VMM's can never drift from it).
            if (e.rec.state in ACTIVE and e.handle is not None
                    and e.handle.supports(actions.PutMetadata)):
                await self._vmm_op(e, actions.PutMetadata(json.loads(doc)))
            e.rec.metadata = doc
            self.store.save(e.rec)
            return doc


def _host_path(path: str) -> str:
    if not path or not os.path.isabs(path):
        raise InvalidSpec("path_on_host", f"must be an absolute host path, got {path!r}")
    if not os.path.exists(path):
        raise InvalidSpec("path_on_host", f"{path!r} does not exist on this host")
    return path
