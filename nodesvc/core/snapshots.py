"""Snapshots on the node: create from a VM, list, delete, restore into a new VM (mixed into
`Node`).

A snapshot lives in <state_dir>/snapshots/<id>/: `vm.state` and `vm.mem` (written by the
VMM, nodesvc.vmm.snapshot) and `meta.json` (written here: the source VM, its spec, when,
sizes). Jailed VMMs open no host path, so the node creates the files and hands their
descriptors over with the request; a restore gets them the same way, read-only (the
memory file is mapped MAP_PRIVATE: clones share its pages and never change it).

A restore is a new VM: its record is created from the snapshot's spec with the clone's
overrides (TAP names, MACs, the vsock socket path), its VMM is spawned as for a start —
jailed through the zygote — and told `restore_snapshot` instead of `start`. A snapshot the
VMM refuses (corrupt, wrong version, short memory file) leaves no VM behind.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shutil
import time

from ..vmm import actions
from . import spec as specs
from .errors import AlreadyExists, InvalidSpec, NotFound, WrongState
from .model import VmState

S = VmState
SNAPSHOT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
STATE_FILE, MEM_FILE, META_FILE = "vm.state", "vm.mem", "meta.json"
CALL_TIMEOUT = 300.0      # writing a large memory file takes a while


def apply_spec_overrides(spec: dict, overrides: dict | None) -> dict:
    """A clone's spec: {"network_interfaces": [{"iface_id", "host_dev_name"?, "guest_mac"?}],
    "vsock_uds_path": str}. An unknown iface_id is an error, as in Firecracker."""
    spec = copy.deepcopy(spec)
    overrides = overrides or {}
    unknown = set(overrides) - {"network_interfaces", "vsock_uds_path"}
    if unknown:
        raise InvalidSpec("overrides", f"unknown override(s): {', '.join(sorted(unknown))}")
    ifaces = {i["iface_id"]: i for i in spec.get("network_interfaces", [])}
    for n, o in enumerate(overrides.get("network_interfaces") or ()):
        iface = ifaces.get(o.get("iface_id"))
        if iface is None:
            raise InvalidSpec(f"overrides.network_interfaces[{n}].iface_id",
                              f"the snapshot has no interface {o.get('iface_id')!r} "
                              f"(it has: {', '.join(ifaces) or 'none'})")
        for key in ("host_dev_name", "guest_mac"):
            if o.get(key):
                iface[key] = o[key]
    if overrides.get("vsock_uds_path"):
        if not spec.get("vsock"):
            raise InvalidSpec("overrides.vsock_uds_path", "the snapshot has no vsock device")
        spec["vsock"]["uds_path"] = overrides["vsock_uds_path"]
    return spec


class SnapshotOps:
    # -- storage ------------------------------------------------------------------------------
    def _snapshot_dir(self, snapshot_id: str) -> str:
        if not isinstance(snapshot_id, str) or not SNAPSHOT_ID.fullmatch(snapshot_id):
            raise InvalidSpec("snapshot_id", "must be 1-64 characters of [A-Za-z0-9_.-], "
                                             f"starting with a letter or digit, got {snapshot_id!r}")
        return os.path.join(self.cfg.state_dir, "snapshots", snapshot_id)

    def get_snapshot(self, snapshot_id: str) -> dict:
        d = self._snapshot_dir(snapshot_id)
        try:
            with open(os.path.join(d, META_FILE)) as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise NotFound(f"no snapshot {snapshot_id!r} on this node") from None
        meta["state_path"], meta["mem_path"] = (os.path.join(d, STATE_FILE),
                                                os.path.join(d, MEM_FILE))
        return meta

    def list_snapshots(self, source_vm: str | None = None) -> list[dict]:
        root = os.path.join(self.cfg.state_dir, "snapshots")
        out = []
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else ():
            try:
                meta = self.get_snapshot(name)
            except (NotFound, InvalidSpec, ValueError):
                continue    # a snapshot being written (no meta.json yet) or a stray dir
            if not source_vm or meta.get("source_vm") == source_vm:
                out.append(meta)
        return out

    def delete_snapshot(self, snapshot_id: str) -> None:
        d = self._snapshot_dir(snapshot_id)
        self.get_snapshot(snapshot_id)
        shutil.rmtree(d, ignore_errors=True)

    # -- create -------------------------------------------------------------------------------
    async def create_snapshot(self, vm_id: str, snapshot_id: str | None = None,
                              resume: bool = True, *, pause: bool = True) -> dict:
        """Pause (if running and `pause`) → save → resume if this call paused it and
        `resume`. Without `pause` a RUNNING VM is refused, as Firecracker's snapshot/create
        refuses a running VM. No `snapshot_id`: "<vm_id>-<UTC yyyymmdd-hhmmss>"."""
        d = self._snapshot_dir(snapshot_id) if snapshot_id else None
        e = self.entry(vm_id)
        async with e.lock:
            self._need(e, {S.RUNNING, S.PAUSED}, "snapshot")
            if e.rec.state is S.RUNNING and not pause:
                raise WrongState(f"cannot snapshot VM {vm_id}: it is RUNNING; pause it first "
                                 "(or ask for it to be paused for the save)")
            snapshot_id, d = self._new_snapshot_dir(vm_id, snapshot_id, d)
            was_running = e.rec.state is S.RUNNING
            fds = {}
            try:
                if was_running:
                    await self._vmm_op(e, actions.Pause())
                    self._set_state(e, S.PAUSED)
                paths = (os.path.join(d, STATE_FILE), os.path.join(d, MEM_FILE))
                for p in paths:
                    fds[p] = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                t0 = time.monotonic()
                res = await self._snapshot_call(e, actions.CreateSnapshot(*paths), fds)
                took = time.monotonic() - t0
            except BaseException:
                shutil.rmtree(d, ignore_errors=True)
                raise
            finally:
                for fd in fds.values():
                    os.close(fd)
                if was_running and resume and e.handle is not None and e.rec.state is S.PAUSED:
                    await self._vmm_op(e, actions.Resume())
                    self._set_state(e, S.RUNNING)
            meta = {"id": snapshot_id, "source_vm": vm_id, "created_at": time.time(),
                    "spec": e.rec.spec, "labels": dict(e.rec.labels),
                    "state_bytes": res.state_bytes, "memory_bytes": res.memory_bytes,
                    "disk_bytes": _disk_usage(d), "create_seconds": took,
                    "vmm_seconds": res.seconds}
            tmp = os.path.join(d, META_FILE + ".tmp")
            with open(tmp, "w") as f:
                json.dump(meta, f)
            os.replace(tmp, os.path.join(d, META_FILE))
            return self.get_snapshot(snapshot_id)

    def _new_snapshot_dir(self, vm_id: str, snapshot_id: str | None, d: str | None):
        """Create the snapshot's directory: (id, path). A named one that exists is an error;
        a generated name gets a ".N" suffix instead."""
        if snapshot_id:
            try:
                os.makedirs(d)
            except FileExistsError:
                raise AlreadyExists(f"snapshot {snapshot_id!r} already exists") from None
            return snapshot_id, d
        base = f"{vm_id[:40]}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        for n in range(1, 1000):
            sid = base if n == 1 else f"{base}.{n}"
            d = self._snapshot_dir(sid)
            try:
                os.makedirs(d)
                return sid, d
            except FileExistsError:
                continue
        raise AlreadyExists(f"snapshot names {base}.* are all taken")

    async def _snapshot_call(self, e, action, files: dict):
        if e.handle is None:
            raise WrongState(f"VM {e.rec.id} has no VMM process")
        try:
            return await e.handle.call(action, timeout=CALL_TIMEOUT, files=files)
        except actions.WrongState as err:
            raise WrongState(f"VM {e.rec.id}: {action.name} failed: {err}") from None
        except actions.ActionError as err:
            raise WrongState(f"VM {e.rec.id}: {action.name} failed: {err}") from None

    # -- restore ------------------------------------------------------------------------------
    async def restore_vm(self, snapshot_id: str, vm_id: str, *, overrides: dict | None = None,
                         labels: dict | None = None, resume: bool = True):
        """A new VM `vm_id` running (or paused) from the snapshot; its record, or an error
        with no VM left behind."""
        meta = self.get_snapshot(snapshot_id)
        spec = apply_spec_overrides(meta["spec"], overrides)
        await self.create_vm(vm_id, spec, labels if labels is not None else meta.get("labels"))
        try:
            return await self._restore_started(vm_id, meta, resume)
        except BaseException:
            e = self.vms.get(vm_id)
            if e is not None and e.rec.state in (S.CREATED, S.STOPPED, S.FAILED):
                await self.delete_vm(vm_id)
            raise

    async def _restore_started(self, vm_id: str, meta: dict, resume: bool):
        from .. import tracing as tr
        e = self.entry(vm_id)
        async with e.lock:
            m = e.rec.spec["machine"]
            self.cfg.capacity.check(vm_id, m["memory_mib"], m["vcpus"], *self._allocated())
            paths = self.launcher.paths(vm_id)
            fc = specs.to_firecracker(e.rec.spec)
            self.launcher.prepare(vm_id, paths, fc)
            e.fresh_streams()
            with tr.vmm_start(self.cfg.tracing, vm_id) as trace:
                h = await self._spawn(e, paths, fc, trace)
                why = "VMM process did not answer on its control socket"
                if await h.connect():
                    fds = {p: os.open(p, os.O_RDONLY | os.O_CLOEXEC)
                           for p in (meta["state_path"], meta["mem_path"])}
                    try:
                        await h.call(actions.RestoreSnapshot(meta["state_path"], meta["mem_path"],
                                                             resume), timeout=CALL_TIMEOUT,
                                     files=fds)
                        h.started = True
                    except actions.ActionError as err:
                        why = str(err)
                    finally:
                        for fd in fds.values():
                            os.close(fd)
                if h.started:
                    if e.rec.state is S.STARTING:
                        self._set_state(e, S.RUNNING)
                        if not resume:
                            self._set_state(e, S.PAUSED)
                    return e.rec
                h.stop_requested = f"restore failed: {why}"
                try:
                    await h.call(actions.Stop(h.stop_requested), timeout=2.0)
                except actions.ActionError:
                    pass
                await asyncio.wait([h.done], timeout=5.0)
                if not h.done.done():
                    h.kill()
                await h.done
                raise WrongState(f"VM {vm_id} could not be restored from snapshot "
                                 f"{meta['id']!r}: {why}")


def _disk_usage(d: str) -> int:
    return sum(os.stat(os.path.join(d, n)).st_blocks * 512 for n in os.listdir(d))
