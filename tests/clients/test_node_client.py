"""The Node.js client (clients/node, @grpc/grpc-js + @grpc/proto-loader) against a real node
service: any language can drive the node from the proto alone."""

import json
import os
import shutil
import subprocess

import pytest

from nodesvc_client import pb
from tests.clients.conftest import spec_dict
from tests.service.conftest import ROOT

NODE_DIR = ROOT / "clients" / "node"


@pytest.fixture(scope="session")
def node_js():
    """`node`, with clients/node's dependencies as `make setup` installs them (`npm ci`):
    a test never reaches a registry, it names the set-up step instead."""
    if not shutil.which("node"):
        pytest.fail("node is not installed: run `make sysdeps` (scripts/install-sysdeps)")
    stamp = NODE_DIR / "node_modules" / ".package-lock.json"   # written by npm ci/install
    lock = NODE_DIR / "package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        pytest.fail("clients/node dependencies are missing or older than package-lock.json: "
                    "run `make setup` (npm ci in clients/node)")
    return shutil.which("node")


@pytest.fixture
def nodectl_js(node_js, shared_server):
    def run(*args):
        r = subprocess.run([node_js, str(NODE_DIR / "nodectl.js"), "--socket",
                            shared_server.socket, *args], capture_output=True, text=True,
                           timeout=60)
        return r.returncode, r.stdout, r.stderr
    return run


def write(tmp_path, doc, name="vm.json"):
    (tmp_path / name).write_text(json.dumps(doc))
    return str(tmp_path / name)


def test_create_and_list(nodectl_js, client, tmp_path, guest):
    doc = {"vm_id": "js-one", "labels": {"lang": "js"}, "spec": spec_dict(guest("hello"))}
    rc, out, err = nodectl_js("create", "-f", write(tmp_path, doc), "--label", "n=1")
    assert rc == 0, err
    vm = json.loads(out)
    assert vm["id"] == "js-one" and vm["state"] == "VM_STATE_CREATED"
    assert vm["labels"] == {"lang": "js", "n": "1"}
    assert vm["spec"]["machine"]["memory_mib"] == 32 and vm["created_at"].endswith("Z")
    # What Node created, Python sees, and the other way round.
    assert client.get_vm("js-one").labels == {"lang": "js", "n": "1"}
    client.create_vm("js-two", spec_dict(guest("hello")), labels={"lang": "py"})

    rc, out, err = nodectl_js("list")
    assert rc == 0, err
    listed = json.loads(out)
    assert {"js-one", "js-two"} <= {v["id"] for v in listed["vms"]}
    assert int(listed["revision"]) >= int(vm["revision"])
    rc, out, _ = nodectl_js("list", "--label", "lang=js", "--state", "created")
    assert [v["id"] for v in json.loads(out)["vms"]] == ["js-one"]
    rc, out, _ = nodectl_js("list", "--state", "running", "--label", "lang=js")
    assert json.loads(out)["vms"] == []
    client.delete_vm("js-one")
    client.delete_vm("js-two")


def test_errors(nodectl_js, tmp_path, guest):
    path = write(tmp_path, {"vm_id": "js-dup", "spec": spec_dict(guest("hello"))})
    assert nodectl_js("create", "-f", path)[0] == 0
    assert nodectl_js("create", "-f", path) == \
        (1, "", "nodectl.js: ALREADY_EXISTS: VM 'js-dup' already exists\n")
    bad = write(tmp_path, {"machine": {"vcpus": 1, "cpus": 2}}, "bad.json")
    rc, _, err = nodectl_js("create", "-f", bad, "--id", "js-bad")
    assert rc == 1 and err.startswith("nodectl.js: INVALID_ARGUMENT: spec.machine.cpus: "
                                      "unknown key")
    rc, _, err = nodectl_js("create", "-f", write(tmp_path, spec_dict("/nope"), "x.json"),
                            "--id", "js-nokernel")
    assert rc == 1 and err.startswith("nodectl.js: INVALID_ARGUMENT: spec.boot.kernel_path")
    assert nodectl_js("frobnicate")[0] == 2
    rc, _, err = nodectl_js("get", "js-none")
    assert rc == 1 and "NOT_FOUND" in err


@pytest.mark.kvm
def test_create_and_start(nodectl_js, client, tmp_path, guest):
    rc, out, err = nodectl_js("create", "-f", write(tmp_path, spec_dict(guest("echo"))),
                              "--id", "js-run", "--start")
    assert rc == 0, err
    vm = json.loads(out)
    assert vm["state"] == "VM_STATE_RUNNING" and vm["vmm_pid"] > 0
    assert os.path.exists(f"/proc/{vm['vmm_pid']}")
    assert client.stop_vm("js-run", force=True).state == pb.VM_STATE_STOPPED
    client.delete_vm("js-run")
