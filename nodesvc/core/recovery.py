"""Node service start-up: load the state dir and re-adopt the VMM processes still running.

A VM whose record says it had a VMM is re-adopted when that process still exists (same pid
*and* same start time, so a recycled pid is not mistaken for it) and answers on its
control socket as the same VM. Otherwise it is marked FAILED — with the VMM's own exit
reason if it left one in exit.json — and its run dir is removed. No VM is lost (every
record is loaded) or duplicated (a VM gets a new VMM only through StartVm).
"""

from __future__ import annotations

import asyncio
import logging
import os

from .model import ACTIVE, VmState
from .supervisor import RunPaths, VmmHandle, _read_json, process_start_time

log = logging.getLogger("nodesvc.core.recovery")
S = VmState
VANISHED = "VMM process vanished while the node service was down"


async def recover(node) -> None:
    records = node.store.load_all()
    node.events.revision = node.events.oldest_missing = max(
        [node.store.load_revision(), *(r.revision for r in records)])
    from .node import VmEntry
    for rec in records:
        node.vms[rec.id] = VmEntry(rec, node.cfg)
    await asyncio.gather(*(_recover_one(node, e) for e in node.vms.values()))
    node.store.save_revision(node.events.revision)


async def _recover_one(node, e) -> None:
    rec = e.rec
    paths = RunPaths(node.store.run_dir(rec.id))
    if rec.state not in ACTIVE:
        paths.remove()      # leftovers of a run that ended while we were writing its record
        return
    info = rec.vmm
    alive = (info is not None and info.start_time
             and process_start_time(info.pid) == info.start_time and os.path.isdir(paths.run_dir))
    if not alive:
        exit_info = _read_json(paths.exit_file) or {}
        if exit_info.get("reason"):
            detail = f": {exit_info['detail']}" if exit_info.get("detail") else ""
            reason = f"{exit_info['reason']}{detail} (while the node service was down)"
            state = S.FAILED if exit_info.get("failure") else S.STOPPED
        else:
            reason, state = VANISHED, S.FAILED
        paths.remove()
        _end(node, e, state, reason)
        return
    h = VmmHandle(rec.id, paths, info.pid, console=e.console, logs=e.logs,
                  on_exit=node._on_vmm_exit, tracing=node.cfg.tracing)
    e.handle = h
    h.watch()
    if not await h.connect(timeout=3.0):
        h.fail_reason = "VMM process did not answer on its control socket after a node restart"
        h.kill()
        await h.done
        return
    vmm_state = getattr(h, "vmm_state", None)
    log.info("%s: re-adopted VMM process %d (%s)", rec.id, info.pid, vmm_state)
    if rec.state is S.STARTING:
        if vmm_state == "running":
            node._set_state(e, S.RUNNING)
        else:   # we died between spawning it and starting it: nobody will finish the start
            h.fail_reason = "the node service restarted while the VM was starting"
            h.kill()
            await h.done
    elif rec.state is S.STOPPING:
        h.stop_requested = "stopped by request (finished after a node restart)"
        h.kill()
        await h.done
    elif rec.state is S.RUNNING and vmm_state == "paused":
        node._set_state(e, S.PAUSED)
    elif rec.state is S.PAUSED and vmm_state == "running":
        node._set_state(e, S.RUNNING)


def _end(node, e, state: VmState, reason: str) -> None:
    e.rec.vmm = None
    if e.rec.state is S.STARTING and state is S.STOPPED:
        node._set_state(e, S.RUNNING)
    node._set_state(e, state, reason)
