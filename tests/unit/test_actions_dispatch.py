"""The VMM process's one dispatch table: request line -> typed action -> handler -> response.
No VM is built here (a VMM that was never started), so no KVM is needed; the handlers that
touch devices are exercised on real VMMs in tests/service/test_service_actions.py."""

import argparse
import json
import os
import socket

import pytest

from nodesvc.vmm import actions as A
from nodesvc.vmm import control
from nodesvc.vmm.process import VmmProcess

PLANNED: set = set()


@pytest.fixture
def proc(tmp_path):
    args = argparse.Namespace(id="unit-vm", config_file=None,
                              control_socket=str(tmp_path / "c.sock"), console_fifo=None,
                              log_fifo=None, metrics_fifo=None, exit_file=None,
                              metrics_interval=0, log_level="info")
    p = VmmProcess(args)
    yield p
    p.close()
    os.close(p.wake_r)
    os.close(p.wake_w)


def ask(proc, msg) -> dict:
    line = msg if isinstance(msg, bytes) else control.encode(msg)[:-1]
    resp = proc.handle_line(line)
    json.dumps(resp)    # every response is plain JSON
    return resp


def test_the_table_holds_every_implemented_action_and_nothing_else(proc):
    assert set(proc.handlers) == set(A.ACTIONS.values()) - PLANNED
    for cls, handler in proc.handlers.items():
        assert handler.__self__ is proc, cls


def test_hello_lists_the_actions(proc, tmp_path):
    proc.listener = control.bind_unix(proc.args.control_socket)
    proc.listener.listen(1)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(proc.args.control_socket)
        proc._accept()
        hello = json.loads(s.makefile("rb").readline())
    assert hello["event"] == "hello" and hello["vm_id"] == "unit-vm"
    assert hello["protocol"] == control.PROTOCOL and hello["state"] == control.READY
    assert hello["actions"] == A.names(proc.handlers)
    assert set(hello["actions"]) == {c.name for c in A.ACTIONS.values()} - \
        {c.name for c in PLANNED}


def test_status_is_typed_on_the_way_out(proc):
    r = ask(proc, A.encode_request(A.Status(), 1))
    assert r["ok"] and r["id"] == 1
    st = A.decode_result(A.Status, r["result"])
    assert (st.vm_id, st.pid, st.state, st.stats) == ("unit-vm", os.getpid(), "ready", None)


def test_bad_arguments_are_refused_before_the_handler_runs(proc):
    calls = []
    proc.handlers[A.Stop] = lambda a: calls.append(a) or A.Done()
    for args in ({"detail": 3}, {"reason": "x"}):
        r = ask(proc, {"id": 2, "op": "stop", "args": args})
        assert (r["ok"], r["kind"], r["id"]) == (False, "bad-request", 2), r
    assert "stop.detail: must be a string" in ask(proc, {"id": 3, "op": "stop",
                                                         "args": {"detail": 3}})["error"]
    assert calls == []
    assert ask(proc, {"id": 4, "op": "stop", "args": {"detail": "ok"}})["ok"]
    assert calls == [A.Stop("ok")]


def test_a_type_error_while_an_action_runs_is_internal(proc):
    def buggy(action):
        return int.from_bytes(action.data)      # a real TypeError: missing argument
    proc.handlers[A.ConsoleInput] = buggy
    r = ask(proc, A.encode_request(A.ConsoleInput(b"\x01"), 5))
    assert (r["ok"], r["kind"]) == (False, "internal"), r
    assert "TypeError" in r["error"] and "bad arguments" not in r["error"]
    assert type(A.error(r["kind"], r["error"])) is A.Internal
    # the VMM carries on
    assert ask(proc, A.encode_request(A.Status(), 6))["ok"]


def test_an_action_error_keeps_its_kind(proc):
    r = ask(proc, A.encode_request(A.Pause(), 7))
    assert (r["kind"], r["error"]) == ("wrong-state", "VM is ready, needs running")
    r = ask(proc, A.encode_request(A.ConsoleInput(b"x"), 8))
    assert r["kind"] == "wrong-state"


def test_snapshot_actions_check_the_vm_state_first(proc):
    r = ask(proc, A.encode_request(A.CreateSnapshot("/s", "/m"), 9))
    assert (r["kind"], r["error"]) == ("wrong-state", "VM is ready, needs paused")
    r = ask(proc, A.encode_request(A.RestoreSnapshot("/nonexistent/s", "/nonexistent/m"), 9))
    assert r["kind"] == "failed" and "restore refused" in r["error"]
    assert proc.state == control.READY and proc.vm is None


def test_lines_that_are_not_requests(proc):
    r = ask(proc, b"{not json")
    assert (r["id"], r["kind"]) == (None, "bad-request") and "not JSON" in r["error"]
    r = ask(proc, {"id": 10, "op": "op_status"})
    assert r["kind"] == "bad-request" and "unknown action 'op_status'" in r["error"]
    r = ask(proc, {"id": 11, "op": "_stop", "args": {"detail": "x"}})  # no method lookup
    assert r["kind"] == "bad-request" and proc.exit_info is None


def test_stop_before_start_ends_the_process_loop(proc):
    r = ask(proc, A.encode_request(A.Stop("not needed"), 12))
    assert r == {"id": 12, "ok": True, "result": {}}
    assert proc.exit_info["reason"] == "stopped" and proc.exit_info["detail"] == "not needed"
