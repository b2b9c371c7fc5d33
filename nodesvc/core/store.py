"""Persistence: one JSON file per VM in `<state-dir>/vms/`, written atomically.

Write to a temporary file in the same directory, fsync it, rename it over the old one and
fsync the directory: a crash leaves either the old or the new record, never half of one.
The node's event revision is stored beside them so revisions keep increasing across restarts.
"""

from __future__ import annotations

import json
import logging
import os

from .model import VmRecord

log = logging.getLogger("nodesvc.core.store")


def atomic_write(path: str, data: bytes) -> None:
    d = os.path.dirname(path)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Store:
    def __init__(self, state_dir: str):
        self.state_dir = os.path.abspath(state_dir)
        self.vm_dir = os.path.join(self.state_dir, "vms")
        self.run_root = os.path.join(self.state_dir, "run")
        for d in (self.state_dir, self.vm_dir, self.run_root):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._revision_path = os.path.join(self.state_dir, "revision")

    def _path(self, vm_id: str) -> str:
        return os.path.join(self.vm_dir, f"{vm_id}.json")

    def run_dir(self, vm_id: str) -> str:
        return os.path.join(self.run_root, vm_id)

    def save(self, rec: VmRecord) -> None:
        atomic_write(self._path(rec.id), json.dumps(rec.to_json(), indent=1).encode())

    def delete(self, vm_id: str) -> None:
        try:
            os.unlink(self._path(vm_id))
        except FileNotFoundError:
            pass

    def load_all(self) -> list[VmRecord]:
        out = []
        for name in sorted(os.listdir(self.vm_dir)):
            if not name.endswith(".json") or name.startswith("."):
                continue
            path = os.path.join(self.vm_dir, name)
            try:
                with open(path) as f:
                    out.append(VmRecord.from_json(json.load(f)))
            except (OSError, ValueError, TypeError, KeyError) as e:
                # Keep the bad file for a human; never let one record stop the node.
                log.error("skipping unreadable VM record %s: %s", path, e)
        return out

    def load_revision(self) -> int:
        try:
            with open(self._revision_path) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def save_revision(self, revision: int) -> None:
        atomic_write(self._revision_path, str(revision).encode())
