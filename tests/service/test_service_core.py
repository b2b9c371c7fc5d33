"""The core's building blocks on their own: event log, fan-out, metadata, store, FIFO writer."""

import asyncio
import json
import os
import threading

import pytest

from nodesvc.core import metadata
from nodesvc.core.errors import Exhausted, InvalidSpec, OutOfRange
from nodesvc.core.events import CREATED, Event, EventLog
from nodesvc.core.fanout import byte_fanout, record_fanout
from nodesvc.core.model import TRANSITIONS, VmRecord, VmState
from nodesvc.core.store import Store
from nodesvc.vmm.process import FifoWriter


def _ev(log: EventLog) -> Event:
    rev = log.next_revision()
    ev = Event(rev, CREATED, {"id": f"vm{rev}", "labels": {}}, None)
    log.publish(ev)
    return ev


def test_event_log_replays_follows_and_bounds_its_history():
    async def main():
        log = EventLog(history=3, watcher_queue=2)
        for _ in range(5):
            _ev(log)
        with pytest.raises(OutOfRange):
            await anext(log.watch(since=1))
        with pytest.raises(OutOfRange):
            await anext(log.watch(since=9))
        w = log.watch(since=3)
        assert [(await anext(w)).revision for _ in range(2)] == [4, 5]
        nxt = asyncio.ensure_future(anext(w))
        await asyncio.sleep(0)
        _ev(log)
        assert (await nxt).revision == 6
        # A watcher that stops reading is ended (never silently skipped ahead).
        slow = log.watch()
        first = asyncio.ensure_future(anext(slow))
        await asyncio.sleep(0)
        for _ in range(4):
            _ev(log)
        assert (await first).revision == 7
        assert (await anext(slow)).revision == 8    # its queue (2) held 7 and 8; 9 overflowed
        with pytest.raises(Exhausted):
            await anext(slow)
    asyncio.run(main())


def test_fanout_history_and_slow_subscribers_drop_without_blocking():
    async def main():
        f = byte_fanout(history=8, backlog=4)
        f.publish(b"boot")
        f.publish(b"-log-")
        sub = f.subscribe(include_history=True)
        assert await anext(sub) == ([b"-log-"], 0)      # history keeps the newest 8 bytes
        for chunk in (b"ab", b"cd", b"ef"):             # backlog holds 4: "ef" is dropped
            f.publish(chunk)
        assert await anext(sub) == ([b"ab", b"cd"], 2)  # ...and reported with what's left
        f.publish(b"g")
        assert await anext(sub) == ([b"g"], 0)
        f.close()
        with pytest.raises(StopAsyncIteration):
            await anext(sub)
        r = record_fanout(history=2, backlog=10)
        for i in range(3):
            r.publish({"n": i})
        assert r.history() == [{"n": 1}, {"n": 2}]
    asyncio.run(main())


def test_metadata_merge_patch_follows_rfc_7396():
    cases = [({"a": "b"}, {"a": "c"}, {"a": "c"}), ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
             ({"a": "b"}, {"a": None}, {}), ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
             ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
             ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}})]
    for target, patch, want in cases:
        assert json.loads(metadata.patch(json.dumps(target), json.dumps(patch))) == want
    with pytest.raises(InvalidSpec):
        metadata.patch("{}", "[1]")


def test_store_writes_atomically_and_skips_unreadable_records(tmp_path):
    store = Store(str(tmp_path))
    rec = VmRecord("a", {"machine": {}}, {"k": "v"}, VmState.RUNNING, revision=7)
    store.save(rec)
    (tmp_path / "vms" / "broken.json").write_text("{not json")
    assert [r.to_json() for r in store.load_all()] == [rec.to_json()]
    assert not [n for n in os.listdir(tmp_path / "vms") if n.endswith(".tmp")]
    store.save_revision(42)
    assert Store(str(tmp_path)).load_revision() == 42


def test_every_state_is_reachable_and_ends_can_restart():
    seen, todo = {VmState.CREATED}, [VmState.CREATED]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(VmState)
    assert VmState.STARTING in TRANSITIONS[VmState.FAILED] & TRANSITIONS[VmState.STOPPED]


def test_fifo_writer_drops_and_counts_when_nobody_reads(tmp_path):
    path = str(tmp_path / "log.fifo")
    os.mkfifo(path)
    w = FifoWriter(path)        # no reader at all: must not block on open or write
    writer = threading.Thread(target=lambda: [w.write_line({"message": "x" * 100, "n": i})
                                              for i in range(2000)], daemon=True)
    writer.start()
    writer.join(60)             # a blocking write would never end (its cost: bench/lifecycle.py)
    assert not writer.is_alive(), "FifoWriter blocked with no reader"
    assert w.dropped_writes > 0 and w.written > 0
    # A reader that shows up later gets whole lines only.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    data = os.read(fd, 1 << 20)
    os.close(fd)
    w.close()
    assert all(json.loads(line)["message"] for line in data.splitlines())
