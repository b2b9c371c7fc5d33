"""`Node`: the VM registry and lifecycle operations, transport-agnostic (asyncio).

Every mutation of a VM runs under that VM's lock and is shielded from the caller's
cancellation: a client that hangs up or hits its deadline mid-stop does not leave a VM
half-stopped. State changes go through `_set_state`, which checks the transition, persists
the record and publishes the event, in one event-loop step.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from . import spec as specs
from .capacity import Capacity
from .. import tracing as tr
from ..vmm import actions, control
from .errors import (AlreadyExists, InvalidSpec, NotFound, Unsupported, VmmInternalError,
                     WrongState)
from .events import CREATED, DELETED, STATE_CHANGED, Event, EventLog
from .fanout import Fanout, byte_fanout, record_fanout
from .live import LiveOps
from .snapshots import SnapshotOps
from .model import ACTIVE, DELETABLE, STARTABLE, TRANSITIONS, VmmInfo, VmRecord, VmState
from .store import Store
from .exec_jail import ExecJailLauncher
from .launcher import ExecLauncher, JailConfig, ZygoteLauncher
from .supervisor import (ExitInfo, RunPaths, VmmHandle, process_start_time, read_json,
                         spawn_vmm)

log = logging.getLogger("nodesvc.core")
S = VmState
VANISHED = "VMM process vanished while the node service was down"
JAIL_MODES = {"zygote": ZygoteLauncher, "exec": ExecJailLauncher}


@dataclass
class NodeConfig:
    state_dir: str
    capacity: Capacity = field(default_factory=Capacity.detect)
    event_history: int = 1000
    console_history_bytes: int = 64 << 10
    log_history: int = 500
    default_grace_s: float = 10.0
    vmm_metrics_interval_s: float = 10.0
    vmm_log_level: str = "info"
    # Every VMM runs jailed (nodesvc/core/launcher.py); None: <state_dir>/jail.
    jail: JailConfig | None = None
    #: developers only: VMMs as plain children (root, host namespaces, no seccomp)
    no_jail: bool = False
    #: "zygote": forked from one pre-imported process (fast, one ASLR layout for all);
    #: "exec": a fresh jailed interpreter per VM (nodesvc/core/exec_jail.py)
    jail_mode: str = "zygote"
    # Unjailed only: command(vm_id, paths) -> argv, then spawn(argv, ...) -> Popen.
    command: Callable[..., list[str]] | None = None
    spawn: Callable[..., object] = spawn_vmm
    tracing: tr.Tracing | None = None    # None: tracing off (and free)
    #: start_gate(record) -> None, or why this VM may not start now (the fleet's fence)
    start_gate: Callable[[VmRecord], str | None] | None = None


class VmEntry:
    """A record plus what only lives in memory: its lock, VMM handle and stream fan-outs."""

    def __init__(self, rec: VmRecord, cfg: NodeConfig):
        self.rec, self.cfg = rec, cfg
        self.lock = asyncio.Lock()
        self.handle: VmmHandle | None = None
        self.console: Fanout[bytes] = byte_fanout(cfg.console_history_bytes)
        self.logs: Fanout[dict] = record_fanout(cfg.log_history)
        if rec.state not in (S.CREATED, *ACTIVE):   # no run to follow until the next start
            self.console.close()
            self.logs.close()

    def fresh_streams(self) -> None:
        if self.console.closed:
            self.console = byte_fanout(self.cfg.console_history_bytes)
        if self.logs.closed:
            self.logs = record_fanout(self.cfg.log_history)


def _shielded(fn):
    """Run a mutation to completion even if the awaiting caller is cancelled."""
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        task = asyncio.ensure_future(fn(*args, **kwargs))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # never "unretrieved"
        return await asyncio.shield(task)
    return wrapper


class Node(LiveOps, SnapshotOps):
    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.store = Store(cfg.state_dir)
        self.vms: dict[str, VmEntry] = {}
        self.events = EventLog(history=cfg.event_history)
        self.started_at = time.time()
        if cfg.command is not None and not cfg.no_jail:
            raise ValueError("NodeConfig.command replaces the VMM: only with no_jail=True")
        if cfg.no_jail:
            self.launcher = ExecLauncher(self.store, metrics_interval=cfg.vmm_metrics_interval_s,
                                         log_level=cfg.vmm_log_level, command=cfg.command,
                                         spawn=cfg.spawn)
        else:
            if cfg.jail_mode not in JAIL_MODES:
                raise ValueError(f"jail_mode must be one of {', '.join(JAIL_MODES)}, "
                                 f"not {cfg.jail_mode!r}")
            jail = cfg.jail or JailConfig(os.path.join(cfg.state_dir, "jail"))
            self.launcher = JAIL_MODES[cfg.jail_mode](
                cfg.state_dir, jail, metrics_interval=cfg.vmm_metrics_interval_s,
                log_level=cfg.vmm_log_level)

    # -- open / close -------------------------------------------------------------------------
    async def open(self) -> None:
        """Load the state dir and re-adopt the VMM processes still running.

        A VM whose record says it had a VMM is re-adopted when that process still exists
        (same pid *and* same start time, so a recycled pid is not mistaken for it) and
        answers on its control socket as the same VM. Otherwise it is marked FAILED — with
        the VMM's own exit reason if it left one in exit.json — and its run dir is removed.
        No VM is lost (every record is loaded) or duplicated (a VM gets a new VMM only
        through StartVm)."""
        await self.launcher.open()
        records = self.store.load_all()
        self.events.revision = self.events.oldest_missing = max(
            [self.store.load_revision(), *(r.revision for r in records)])
        for rec in records:
            self.vms[rec.id] = VmEntry(rec, self.cfg)
        await asyncio.gather(*(self._recover(e) for e in self.vms.values()))
        self.launcher.sweep({i for i, e in self.vms.items() if e.handle is not None})
        self.store.save_revision(self.events.revision)

    async def _recover(self, e: VmEntry) -> None:
        rec = e.rec
        paths = RunPaths(rec.vmm.run_dir) if rec.vmm else self.launcher.paths(rec.id)
        if rec.state not in ACTIVE:
            paths.remove()      # leftovers of a run that ended while we wrote its record
            return
        info = rec.vmm
        alive = (info is not None and info.start_time and os.path.isdir(paths.run_dir)
                 and process_start_time(info.pid) == info.start_time)
        if not alive:
            exit_info = read_json(paths.exit_file) or {}
            if exit_info.get("reason"):
                detail = f": {exit_info['detail']}" if exit_info.get("detail") else ""
                reason = f"{exit_info['reason']}{detail} (while the node service was down)"
                state = S.FAILED if exit_info.get("failure") else S.STOPPED
            else:
                reason, state = VANISHED, S.FAILED
            paths.remove()
            reason = self.launcher.gone(rec.id) or reason
            e.rec.vmm = None
            if e.rec.state is S.STARTING and state is S.STOPPED:
                self._set_state(e, S.RUNNING)
            self._set_state(e, state, reason)
            return
        h = VmmHandle(rec.id, paths, info.pid, console=e.console, logs=e.logs,
                      on_exit=self._on_vmm_exit, tracing=self.cfg.tracing,
                      on_gone=functools.partial(self.launcher.gone, rec.id))
        e.handle = h
        h.watch()
        if not await h.connect(timeout=3.0):
            h.fail_reason = ("VMM process did not answer on its control socket after a node "
                             "restart")
            h.kill()
            await h.done
            return
        log.info("%s: re-adopted VMM process %d (%s)", rec.id, info.pid, h.vmm_state)
        if rec.state is S.STARTING:
            if h.vmm_state == control.RUNNING:
                self._set_state(e, S.RUNNING)
            else:   # we died between spawning it and starting it: nobody will finish the start
                h.fail_reason = "the node service restarted while the VM was starting"
                h.kill()
                await h.done
        elif rec.state is S.STOPPING:
            h.stop_requested = "stopped by request (finished after a node restart)"
            h.kill()
            await h.done
        elif rec.state is S.RUNNING and h.vmm_state == control.PAUSED:
            self._set_state(e, S.PAUSED)
        elif rec.state is S.PAUSED and h.vmm_state == control.RUNNING:
            self._set_state(e, S.RUNNING)

    async def close(self) -> None:
        """Let go of every VMM without stopping it: the next node service re-adopts them."""
        for e in self.vms.values():
            if e.handle is not None:
                e.handle.detach()
        self.launcher.close()
        self.store.save_revision(self.events.revision)

    # -- state machine ------------------------------------------------------------------------
    def _set_state(self, e: VmEntry, state: VmState, reason: str = "") -> None:
        prev = e.rec.state
        if state not in TRANSITIONS[prev]:
            raise RuntimeError(f"illegal transition {prev.value} -> {state.value} for {e.rec.id}")
        e.rec.state, e.rec.reason, e.rec.state_changed_at = state, reason, time.time()
        self._commit(e, STATE_CHANGED, prev)

    def _commit(self, e: VmEntry, kind: str, prev: VmState | None) -> None:
        e.rec.revision = self.events.next_revision()
        self.store.save(e.rec)
        self.events.publish(Event(e.rec.revision, kind, e.rec.to_json(), prev))

    def entry(self, vm_id: str) -> VmEntry:
        e = self.vms.get(vm_id)
        if e is None:
            specs.check_vm_id(vm_id)
            raise NotFound(f"no VM {vm_id!r} on this node")
        return e

    def _need(self, e: VmEntry, states, action: str) -> None:
        if e.rec.state not in states:
            want = " or ".join(s.value for s in sorted(states, key=list(S).index))
            raise WrongState(f"cannot {action} VM {e.rec.id}: it is {e.rec.state.value} "
                             f"(needs {want})")

    # -- lifecycle ----------------------------------------------------------------------------
    async def create_vm(self, vm_id: str, spec: dict, labels: dict | None = None,
                        start: bool = False) -> VmRecord:
        specs.check_vm_id(vm_id)
        labels = specs.check_labels(labels or {})
        normalized = specs.normalize(spec, host_mem_bytes=self.cfg.capacity.memory_mib << 20)
        if vm_id in self.vms:   # no await since the check above: a racing create can't slip in
            raise AlreadyExists(f"VM {vm_id!r} already exists")
        e = VmEntry(VmRecord(vm_id, normalized, labels), self.cfg)
        self.vms[vm_id] = e
        self._commit(e, CREATED, None)
        if start:
            return await self.start_vm(vm_id)
        return e.rec

    def _allocated(self) -> tuple[int, int]:
        active = [e.rec.spec["machine"] for e in self.vms.values() if e.rec.state in ACTIVE]
        return sum(m["memory_mib"] for m in active), sum(m["vcpus"] for m in active)

    @_shielded
    async def start_vm(self, vm_id: str) -> VmRecord:
        e = self.entry(vm_id)
        async with e.lock:
            self._need(e, STARTABLE, "start")
            try:    # files may have moved since CreateVm
                specs.check_vmm_accepts(e.rec.spec)
            except InvalidSpec as err:
                raise WrongState(f"cannot start VM {vm_id}: {err}") from None
            m = e.rec.spec["machine"]
            self.cfg.capacity.check(vm_id, m["memory_mib"], m["vcpus"], *self._allocated())
            if self.cfg.start_gate is not None and (why := self.cfg.start_gate(e.rec)):
                raise WrongState(f"cannot start VM {vm_id}: {why}")
            paths = self.launcher.paths(vm_id)
            fc = specs.to_firecracker(e.rec.spec)
            self.launcher.prepare(vm_id, paths, fc)
            e.fresh_streams()
            with tr.vmm_start(self.cfg.tracing, vm_id) as trace:
                h = await self._spawn(e, paths, fc, trace)
                why = "VMM process did not answer on its control socket"
                if await h.connect():
                    try:
                        await self._first_metadata(e, h)    # MMDS: in before the boot
                        res = await h.call(actions.Start(), timeout=60.0,
                                           trace=trace.traceparent)
                        trace.started({"timeline": res.timeline})
                        h.started = True
                    except actions.ActionError as err:
                        why = f"start failed: {err}"
                if h.started:
                    if e.rec.state is S.STARTING:
                        self._set_state(e, S.RUNNING)
                    return e.rec
                # The VMM exits by itself after a failed start (and says why); make sure.
                await asyncio.wait([h.done], timeout=5.0)
                if not h.done.done():
                    h.fail_reason = why
                    h.kill()
                info = await h.done
                raise WrongState(f"VM {vm_id} failed to start: {info.reason}")

    async def _spawn(self, e: VmEntry, paths: RunPaths, fc: dict, trace) -> VmmHandle:
        trace.before_spawn()
        try:
            pid, popen = await self.launcher.launch(e.rec.id, paths, fc)
        except OSError as err:
            paths.remove()
            self.launcher.gone(e.rec.id)
            raise WrongState(f"cannot start VM {e.rec.id}: spawning its VMM failed: "
                             f"{err}") from None
        trace.spawned(pid)
        h = VmmHandle(e.rec.id, paths, pid, console=e.console, logs=e.logs,
                      on_exit=self._on_vmm_exit, popen=popen, tracing=self.cfg.tracing,
                      on_gone=functools.partial(self.launcher.gone, e.rec.id))
        h.watch()
        e.handle = h
        e.rec.vmm = VmmInfo(pid, h.start_time, paths.run_dir)
        e.rec.start_count += 1
        self._set_state(e, S.STARTING)
        return h

    def _on_vmm_exit(self, h: VmmHandle, info: ExitInfo) -> None:
        e = self.vms.get(h.vm_id)
        if e is None or e.handle is not h:
            return
        e.handle = None
        e.rec.vmm = None
        if e.rec.state is S.STARTING and info.ran:
            self._set_state(e, S.RUNNING)
        if e.rec.state in ACTIVE:
            self._set_state(e, S.FAILED if info.failed else S.STOPPED, info.reason)
        log.info("%s: VMM ended: %s", h.vm_id, info.reason)

    @_shielded
    async def stop_vm(self, vm_id: str, grace_s: float | None = None, force: bool = False,
                      budget_s: float | None = None) -> VmRecord:
        """Ctrl-Alt-Del, wait `grace_s`, then stop; kill if the VMM doesn't comply.
        `budget_s` (the caller's deadline) caps the grace period."""
        e = self.entry(vm_id)
        async with e.lock:
            self._need(e, {S.RUNNING, S.PAUSED}, "stop")
            h = e.handle
            graceful = not force and e.rec.state is S.RUNNING   # a paused guest can't react
            grace = self.cfg.default_grace_s if grace_s is None else grace_s
            if budget_s is not None:
                grace = max(0.0, min(grace, budget_s - 1.5))   # leave time for the forced path
            self._set_state(e, S.STOPPING)
            h.stop_requested = "stopped by request"
            if graceful and grace > 0:
                try:
                    sent = (await h.call(actions.CtrlAltDel(), timeout=2.0)).sent
                except actions.ActionError:
                    sent = False
                if sent:
                    await asyncio.wait([h.done], timeout=grace)
            if not h.done.done():
                h.stop_requested = ("stopped by force" if not graceful else
                                    f"stopped by force after a {grace:g}s grace period")
                try:
                    await h.call(actions.Stop(h.stop_requested), timeout=2.0)
                except actions.ActionError:
                    pass
                await asyncio.wait([h.done], timeout=3.0)
            if not h.done.done():
                h.stop_requested += " (VMM process killed)"
                h.kill()
                await h.done
            return e.rec

    async def _vmm_op(self, e: VmEntry, action: actions.Action, files: dict | None = None):
        """Run `action` in the VM's VMM; its typed result. VMM errors become domain errors
        (an internal one stays an internal error: it is a bug, not the caller's mistake).
        `files`: {host path: open fd} handed over with it (a jailed VMM opens nothing)."""
        if e.handle is None:
            raise WrongState(f"VM {e.rec.id} has no VMM process (it is {e.rec.state.value})")
        try:
            return await e.handle.call(action, files=files)
        except actions.ActionError as err:
            msg = f"VM {e.rec.id}: {action.name} failed: {err}"
            if isinstance(err, actions.BadRequest):
                raise InvalidSpec("", msg) from None
            if isinstance(err, actions.Internal):
                raise VmmInternalError(msg) from None
            cls = {actions.Unsupported: Unsupported, actions.NotFound: NotFound}.get(
                type(err), WrongState)
            raise cls(msg) from None

    @_shielded
    async def pause_vm(self, vm_id: str) -> VmRecord:
        e = self.entry(vm_id)
        async with e.lock:
            self._need(e, {S.RUNNING}, "pause")
            await self._vmm_op(e, actions.Pause())
            if e.rec.state is S.RUNNING:
                self._set_state(e, S.PAUSED)
            return e.rec

    @_shielded
    async def resume_vm(self, vm_id: str) -> VmRecord:
        e = self.entry(vm_id)
        async with e.lock:
            self._need(e, {S.PAUSED}, "resume")
            await self._vmm_op(e, actions.Resume())
            if e.rec.state is S.PAUSED:
                self._set_state(e, S.RUNNING)
            return e.rec

    @_shielded
    async def delete_vm(self, vm_id: str) -> None:
        e = self.entry(vm_id)
        async with e.lock:
            self._need(e, DELETABLE, "delete")
            del self.vms[vm_id]
            self.store.delete(vm_id)
            self.launcher.paths(vm_id).remove()
            e.console.close()
            e.logs.close()
            prev = e.rec.state
            e.rec.revision = self.events.next_revision()
            self.store.save_revision(e.rec.revision)   # no record keeps it any more
            self.events.publish(Event(e.rec.revision, DELETED, e.rec.to_json(), prev))

    # -- queries ------------------------------------------------------------------------------
    def get_vm(self, vm_id: str) -> VmRecord:
        return self.entry(vm_id).rec

    def list_vms(self, selector: dict | None = None, states=()) -> tuple[list[VmRecord], int]:
        states = set(states)
        out = [e.rec for e in self.vms.values()
               if e.rec.matches(selector) and (not states or e.rec.state in states)]
        return sorted(out, key=lambda r: r.id), self.events.revision

    async def watch(self, since: int | None = None, selector: dict | None = None,
                    vm_id: str = "") -> AsyncIterator[Event]:
        if vm_id:
            specs.check_vm_id(vm_id)
        async for ev in self.events.watch(since):
            rec = ev.vm
            if vm_id and rec["id"] != vm_id:
                continue
            if selector and any(rec["labels"].get(k) != v for k, v in selector.items()):
                continue
            yield ev

    def node_info(self) -> dict:
        from .nodeinfo import node_info
        return node_info(self)
