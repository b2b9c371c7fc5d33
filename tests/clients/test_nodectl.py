"""nodectl subcommands, run in-process through main([...]) against a real node service."""

import json

import pytest
import yaml

from nodesvc_client.cli import main
from tests.clients.conftest import spec_dict


@pytest.fixture(scope="module")
def sock(shared_server):
    return shared_server.socket


@pytest.fixture
def ctl(sock, capsys):
    """ctl(*args) -> (exit status, stdout, stderr) of `nodectl --socket S args...`."""
    def run(*args):
        capsys.readouterr()
        rc = main(["--socket", sock, *args])
        out, err = capsys.readouterr()
        return rc, out, err
    return run


def write_spec(tmp_path, doc, name="vm.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc) if name.endswith(".yaml") else json.dumps(doc))
    return str(path)


def test_create_ls_get_rm(ctl, tmp_path, guest):
    path = write_spec(tmp_path, {"vm_id": "c-one", "labels": {"team": "a"},
                                 "spec": spec_dict(guest("hello"))})
    rc, out, _ = ctl("create", "-f", path, "-l", "tier=web")
    assert rc == 0 and out.split("\n")[1].split()[:2] == ["c-one", "CREATED"]
    bare = write_spec(tmp_path, spec_dict(guest("hello")), "bare.json")
    assert ctl("create", "-f", bare, "--id", "c-two", "-o", "json")[0] == 0

    rc, out, _ = ctl("ls")
    header, *rows = out.strip().split("\n")
    assert header.split()[:4] == ["ID", "STATE", "VCPUS", "MEMORY"]
    assert {r.split()[0] for r in rows} >= {"c-one", "c-two"}
    rc, out, _ = ctl("ls", "-l", "team=a", "-l", "tier=web", "-o", "json")
    listed = json.loads(out)
    assert [v["id"] for v in listed["vms"]] == ["c-one"] and int(listed["revision"]) > 0
    assert json.loads(ctl("ls", "--state", "running", "-o", "json")[1])["vms"] == []

    rc, out, _ = ctl("get", "c-one", "-o", "json")
    vm = json.loads(out)
    assert vm["labels"] == {"team": "a", "tier": "web"} and vm["state"] == "VM_STATE_CREATED"
    assert vm["spec"]["machine"] == {"vcpus": 1, "memory_mib": 32}
    assert yaml.safe_load(ctl("get", "c-one", "-o", "yaml")[1])["id"] == "c-one"

    assert ctl("rm", "c-one")[1] == "c-one: deleted\n"
    assert ctl("rm", "c-two")[0] == 0


def test_errors_are_one_line_with_the_status_code(ctl, tmp_path, guest):
    assert ctl("get", "nope") == (1, "", "nodectl: NOT_FOUND: no VM 'nope' on this node\n")
    rc, _, err = ctl("start", "bad id!")
    assert rc == 1 and err.startswith("nodectl: INVALID_ARGUMENT: vm_id: ")
    path = write_spec(tmp_path, {"machine": {"vcpus": 1}, "bot": {}})
    rc, _, err = ctl("create", "-f", path, "--id", "x")
    assert (rc, err) == (1, "nodectl: INVALID_ARGUMENT: spec.bot: unknown key "
                            "(did you mean 'boot'?)\n")
    assert ctl("create", "-f", write_spec(tmp_path, spec_dict(guest("hello"))))[2] == \
        "nodectl: INVALID_ARGUMENT: no VM id: give --id ID or vm_id in the spec file\n"
    rc, _, err = ctl("ls", "-l", "novalue")
    assert rc == 1 and err == "nodectl: INVALID_ARGUMENT: --label: want KEY=VALUE, got " \
                              "'novalue'\n"
    rc, _, err = ctl("metadata", "put", "x")
    assert rc == 1 and "needs a document" in err
    rc = main(["--socket", "/nonexistent/n.sock", "--timeout", "1", "info"])
    assert rc == 1


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["stop"])
    assert ei.value.code == 2 and "ID" in capsys.readouterr().err


def test_metadata_info_health(ctl, tmp_path, guest):
    ctl("create", "-f", write_spec(tmp_path, spec_dict(guest("hello"))), "--id", "c-md")
    rc, out, _ = ctl("metadata", "put", "c-md", '{"a": {"b": 1}, "c": 3}')
    assert rc == 0 and json.loads(out) == {"a": {"b": 1}, "c": 3}
    patch = tmp_path / "patch.yaml"
    patch.write_text("a: {d: 2}\nc: null\n")
    assert json.loads(ctl("metadata", "patch", "c-md", "-f", str(patch))[1]) == \
        {"a": {"b": 1, "d": 2}}
    assert json.loads(ctl("metadata", "get", "c-md")[1]) == {"a": {"b": 1, "d": 2}}
    rc, _, err = ctl("metadata", "put", "c-md", "[1]")
    assert rc == 1 and err.startswith("nodectl: INVALID_ARGUMENT: json: ")
    ctl("rm", "c-md")

    rc, out, _ = ctl("info")
    assert rc == 0 and out.startswith("hostname:") and "api nodesvc.v1" in out
    assert json.loads(ctl("info", "-o", "json")[1])["cpus"] >= 1
    assert ctl("health") == (0, "SERVING\n", "")
    assert ctl("health", "--wait", "5")[0] == 0


@pytest.mark.kvm
def test_start_stop_watch_logs_console(ctl, tmp_path, guest):
    rev = json.loads(ctl("ls", "-o", "json")[1])["revision"]
    doc = {"vm_id": "c-echo", "spec": spec_dict(guest("echo"))}
    rc, out, _ = ctl("create", "-f", write_spec(tmp_path, doc), "--start")
    assert rc == 0 and "RUNNING" in out
    assert ctl("pause", "c-echo")[1] == "c-echo: PAUSED\n"
    assert ctl("resume", "c-echo")[1] == "c-echo: RUNNING\n"
    assert ctl("start", "c-echo")[2].startswith("nodectl: FAILED_PRECONDITION: ")
    rc, out, _ = ctl("logs", "c-echo")          # no -f: the retained records, then return
    assert rc == 0 and "VM started" in out
    rc, out, _ = ctl("stop", "c-echo", "--grace", "0.2")
    assert rc == 0 and out.startswith("c-echo: STOPPED (stopped by force after")
    rc, out, _ = ctl("console", "c-echo", "--read-only")   # the last boot's output
    assert rc == 0 and out.startswith("READY")
    rc, out, _ = ctl("logs", "-f", "c-echo", "--metrics", "-o", "json")  # ends with the run
    assert rc == 0 and any("metrics" in json.loads(line) for line in out.splitlines())
    assert ctl("rm", "c-echo")[0] == 0

    rc, out, _ = ctl("watch", "--since", str(rev), "--id", "c-echo", "-n", "8")
    lines = [line.split() for line in out.strip().split("\n")]
    assert [w[1] for w in lines] == ["CREATED"] + ["STATE_CHANGED"] * 6 + ["DELETED"]
    assert lines[3][3] == "RUNNING->PAUSED" and lines[6][3] == "STOPPING->STOPPED"
    rc, out, _ = ctl("watch", "--since", str(rev), "--id", "c-echo", "-n", "1", "-o", "json")
    assert json.loads(out)["type"] == "TYPE_CREATED"


@pytest.mark.kvm
def test_rm_force_stops_first(ctl, tmp_path, guest):
    ctl("create", "-f", write_spec(tmp_path, spec_dict(guest("echo"))), "--id", "c-rmf",
        "--start")
    assert ctl("rm", "c-rmf")[2].startswith("nodectl: FAILED_PRECONDITION: ")
    assert ctl("rm", "-f", "c-rmf") == (0, "c-rmf: deleted\n", "")
    assert ctl("get", "c-rmf")[0] == 1
