"""The typed VMM actions: wire encoding both ways, and argument checks that name the problem."""

import dataclasses
import json

import pytest

from nodesvc.vmm import actions as A
from nodesvc.vmm import control

LIMITER = {"bandwidth": {"size": 1 << 20, "refill_time": 100}, "ops": {"size": 0,
                                                                      "refill_time": 0}}
SAMPLES = [A.Status(), A.Start(), A.Pause(), A.Resume(), A.Stop(), A.Stop("by force"),
           A.CtrlAltDel(), A.ConsoleInput(b"\x00ls -l\r\xff"), A.FlushMetrics(),
           A.UpdateDrive("data", "/img/b.img"), A.UpdateRateLimiter("eth0/rx", LIMITER),
           A.UpdateRateLimiter("entropy", None), A.PutMetadata({"a": {"b": 1}}),
           A.PatchMetadata({"a": None}), A.CreateSnapshot("/s/vm.snap", "/s/vm.mem"),
           A.RestoreSnapshot("/s/vm.snap", "/s/vm.mem")]


def wire(msg: dict) -> dict:
    """Through the real line encoding, as the socket carries it."""
    line = control.encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    return control.decode(line[:-1])


def test_every_declared_action_has_a_sample():
    assert {type(a) for a in SAMPLES} == set(A.ACTIONS.values())


@pytest.mark.parametrize("action", SAMPLES, ids=lambda a: repr(a)[:40])
def test_requests_round_trip(action):
    msg = wire(A.encode_request(action, 7, trace="00-" + "a" * 32 + "-" + "b" * 16 + "-01"))
    assert msg["id"] == 7 and msg["op"] == action.name and msg["trace"].startswith("00-")
    assert A.decode_request(msg) == action


def test_bytes_travel_as_base64():
    msg = A.encode_request(A.ConsoleInput(b"\xff\x00"), 1)
    assert msg["args"] == {"data": "/wA="}


def test_defaults_fill_in_and_no_args_is_fine():
    assert A.decode_request({"id": 1, "op": "stop"}) == A.Stop("stop requested")
    assert A.decode_request({"id": 1, "op": "pause", "args": None}) == A.Pause()


RESULTS = [(A.Start, A.StartResult({"kvm": 0.01}, "console=ttyS0", [{"name": "vmm.kvm"}])),
           (A.CtrlAltDel, A.CtrlAltDelResult(True)), (A.ConsoleInput, A.ConsoleInputResult(3)),
           (A.Status, A.StatusResult("vm", 42, "running", {"console_bytes": 1}, None, [],
                                     "ab" * 16, [])),
           (A.Pause, A.Done())]


@pytest.mark.parametrize("cls,result", RESULTS, ids=lambda x: getattr(x, "__name__", ""))
def test_results_round_trip(cls, result):
    assert cls.result is type(result)
    assert A.decode_result(cls, wire(A.encode_result(result))) == result


def test_result_decoding_tolerates_a_newer_or_older_vmm():
    # unknown fields (a newer VMM) are ignored; missing ones (an older VMM) take defaults
    r = A.decode_result(A.Status, {"state": "paused", "pid": 9, "new_field": [1]})
    assert r == A.StatusResult(state="paused", pid=9)
    assert A.decode_result(A.CtrlAltDel, None) == A.CtrlAltDelResult(sent=False)


BAD = [
    ({"op": "reboot"}, "unknown action 'reboot'"),
    ({"op": None}, "unknown action None"),
    ({"op": ["pause"]}, "unknown action"),
    ({"op": "pause", "args": [1]}, "pause: args must be an object, got an array"),
    ({"op": "pause", "args": {"now": True}}, "pause: unknown argument 'now' (arguments: none)"),
    ({"op": "stop", "args": {"detial": "x"}}, "stop: unknown argument 'detial' (arguments: "
                                              "detail)"),
    ({"op": "stop", "args": {"detail": 5}}, "stop.detail: must be a string, got an integer"),
    ({"op": "stop", "args": {"detail": None}}, "stop.detail: must be a string, got null"),
    ({"op": "update_drive", "args": {"drive_id": "d"}},
     "update_drive: missing argument 'path_on_host'"),
    ({"op": "update_drive", "args": {"drive_id": True, "path_on_host": "/x"}},
     "update_drive.drive_id: must be a string, got a boolean"),
    ({"op": "update_rate_limiter", "args": {"device_id": "d", "rate_limiter": "fast"}},
     "update_rate_limiter.rate_limiter: must be an object or null, got a string"),
    ({"op": "console_input", "args": {"data": "not base64!"}},
     "console_input.data: not valid base64"),
    ({"op": "console_input", "args": {"data": [104, 105]}},
     "console_input.data: must be a base64 string, got an array"),
    ({"op": "put_metadata", "args": {"document": "{}"}},
     "put_metadata.document: must be an object, got a string"),
]


@pytest.mark.parametrize("msg,message", BAD,
                         ids=[f"{i}-{m['op']}" for i, (m, _) in enumerate(BAD)])
def test_bad_requests_are_refused_naming_the_problem(msg, message):
    with pytest.raises(A.BadRequest) as ei:
        A.decode_request(dict(msg, id=1))
    assert message in str(ei.value)
    assert ei.value.kind == control.BAD_REQUEST == "bad-request"


def test_error_kinds_map_to_typed_errors():
    for cls in (A.WrongState, A.BadRequest, A.Unsupported, A.NotFound, A.Failed, A.Internal):
        err = A.error(cls.kind, "why")
        assert type(err) is cls and str(err) == "why" and isinstance(err, A.ActionError)
    assert type(A.error("from-the-future", "x")) is A.Failed   # unknown kinds still fail
    assert type(A.error(None, "x")) is A.Failed


def test_names_are_unique_and_match_the_classes():
    assert len(A.ACTIONS) == len(set(A.ACTIONS.values()))
    for name, cls in A.ACTIONS.items():
        assert cls.name == name and dataclasses.is_dataclass(cls)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(cls.__new__(cls), "x", 1)
    assert A.PROTOCOL_1_ACTIONS <= set(A.ACTIONS)


def test_actions_are_json_only():
    # nothing on the wire is Python-specific: every encoded request is plain JSON
    for a in SAMPLES:
        assert json.loads(json.dumps(A.encode_request(a, 1))) == A.encode_request(a, 1)
