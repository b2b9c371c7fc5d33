"""ONE Linux boot, snapshotted with its devices up, restored into a new jailed VMM: every
agent check then passes in the restored guest (issue 11).

The agent's first check, `wait-go`, parks the guest kernel in a vsock accept once every
virtio driver has probed and `ip=` configured eth0. The test pauses the jailed VM there,
writes its snapshot (state + memory file, handed in as descriptors), ends it, and restores
the files into a second jailed VMM whose eth0 is a *new* TAP in a *new* network namespace
(and a new vsock socket path). Its CONNECT to the go port proves the listener survived the
restore's vsock transport reset; the agent then reads and writes the drives, draws from
virtio-rng, does UDP and TCP through the new TAP, reads the MMDS (V2; the snapshot keeps
the mmds-config, not the data store, as Firecracker's does: the restored VMM gets its
document before it runs), and does vsock in both directions. The restored VM never boots:
no `AGENT START`, no kernel load.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass

import pytest

from nodesvc.net.netns import NetNamespace, delete_link
from nodesvc.testing.jailed import JailedVm
from nodesvc.vmm import cmdline as cmdline_mod
from nodesvc.vmm.config import load_config_file
from nodesvc.vmm.exits import ExitReason

from tests.linux.agent_host import (HostSide, build_agent_kernel, crc32_hex,
                                    missing_host_capability, parse_results, start_host_thread,
                                    tcp_echo, udp_echo, unix_echo, vsock_host_connect)

pytestmark = [pytest.mark.kvm, pytest.mark.linux]

BOOT_BUDGET, RUN_BUDGET = 240, 180
HOST_IP, GUEST_IP, PREFIX = "192.0.2.1", "192.0.2.2", 24
GUEST_MAC, CLONE_MAC = "06:00:c0:00:02:02", "06:00:c0:00:02:03"
TAP_SRC, TAP_DST = "agsnap0", "agsnap1"
UDP_PORT, TCP_PORT = 5311, 5312
VSOCK_CID, VSOCK_PORT, LISTEN_PORT, GO_PORT = 3, 5211, 5212, 5213
HOST_PAYLOAD = b"nodesvc host->restored guest\n"
WRITE_OFF, WRITE_LEN, PATTERN = 4096, 4096, "written-after-the-restore"
MMDS_VALUE = f"restored-{os.urandom(6).hex()}"
METADATA = {"latest": {"meta-data": {"agent-check": MMDS_VALUE}}}
AFTER_GO = ("blk-read", "blk-write", "rng", "udp", "tcp", "mmds", "vsock-connect",
            "vsock-listen")
CHECKS = ",".join(("wait-go",) + AFTER_GO)


def _boot_args() -> str:
    agent = {
        "checks": CHECKS, "timeout": 30, "deadline": 200, "go_port": GO_PORT, "go_wait": 200,
        "read_dev": "vda", "write_dev": "vdb", "write_off": WRITE_OFF,
        "write_len": WRITE_LEN, "pattern": PATTERN,
        "host": HOST_IP, "udp_port": UDP_PORT, "tcp_port": TCP_PORT,
        "vsock_port": VSOCK_PORT, "listen_port": LISTEN_PORT, "rng_bytes": 64,
        "mmds_expect": MMDS_VALUE,
    }
    return " ".join([cmdline_mod.DEFAULT_BOOT_ARGS,
                     f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off",
                     *(f"nodesvc_agent.{k}={v}" for k, v in agent.items())])


def _send_go(uds: str, figures: dict, tries: int = 10) -> bytes:
    """CONNECT to the go port until the agent answers GO; a stream the restore's transport
    reset cut, or one the VMM refused, is retried (what happened goes into `figures`)."""
    reply, figures["go_failures"] = b"", []
    deadline = time.monotonic() + 10    # the VMM's vsock socket appears once the loop runs
    while not os.path.exists(uds) and time.monotonic() < deadline:
        time.sleep(0.02)
    for attempt in range(1, tries + 1):
        try:
            line, reply = vsock_host_connect(uds, GO_PORT, b"go\n", timeout=20)
        except OSError as e:
            line, reply = repr(e).encode(), b""
        if line.startswith(b"OK ") and reply.startswith(b"GO"):
            break
        figures["go_failures"].append([line.decode(errors="replace"),
                                       reply.decode(errors="replace")])
        time.sleep(0.5)
    figures["go_attempts"] = attempt
    return reply


@dataclass
class SnapshotRun:
    before: str           # console of the booted VM, up to the snapshot
    after: str            # console of the restored VM
    results: dict         # agent results in the restored VM
    source: JailedVm
    restored: JailedVm
    exit: object
    snapshot: dict        # create_snapshot's figures
    figures: dict         # what this run measured (seconds)
    go_reply: bytes
    host: HostSide
    servers: dict
    files: dict
    expect: dict


@pytest.fixture(scope="module")
def snapshot_run(guest_kernel, tmp_path_factory, jail_base):
    missing = missing_host_capability()
    if missing:
        pytest.skip(missing)
    kernel = build_agent_kernel()
    d = tmp_path_factory.mktemp("agent-snap")
    files = {"data": d / "data.img", "scratch": d / "scratch.img",
             "state": d / "vm.state", "mem": d / "vm.mem"}
    data = os.urandom(128 << 10)
    files["data"].write_bytes(data)
    files["scratch"].write_bytes(bytes(64 << 10))
    uds_src, uds_dst = str(d / "src.vsock"), str(d / "dst.vsock")
    vm_json = {
        "boot-source": {"kernel_image_path": str(kernel), "initrd_path": str(guest_kernel[1]),
                        "boot_args": _boot_args()},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
        "drives": [
            {"drive_id": "data", "path_on_host": str(files["data"]), "is_root_device": False,
             "is_read_only": True},
            {"drive_id": "scratch", "path_on_host": str(files["scratch"]),
             "is_root_device": False, "cache_type": "Writeback"},
        ],
        "vsock": {"guest_cid": VSOCK_CID, "uds_path": uds_src},
        "entropy": {},
        "mmds-config": {"version": "V2", "network_interfaces": ["eth0"]},
    }
    ns_src, ns_dst = NetNamespace("agsnap-a"), NetNamespace("agsnap-b")
    servers, stop, host, figures = {}, threading.Event(), HostSide(), {}
    try:
        # -- boot until the agent waits for go, snapshot, end the source VM -----------------
        ns_src.create_tap(TAP_SRC)
        ns_src.add_address(TAP_SRC, HOST_IP, PREFIX)
        vm_json["network-interfaces"] = [{"iface_id": "eth0", "host_dev_name": TAP_SRC,
                                          "guest_mac": GUEST_MAC, "netns": ns_src.name}]
        (d / "vm.json").write_text(json.dumps(vm_json, indent=1))
        src = JailedVm(load_config_file(str(d / "vm.json")), vm_id="agent-snap-src",
                       jail_base=jail_base,
                       snapshot_files=(str(files["state"]), str(files["mem"])))
        t0 = time.monotonic()
        src.start()
        ready = src.sink.wait_for(f"AGENT wait-go READY {GO_PORT}".encode(), BOOT_BUDGET)
        figures["boot_to_wait_go"] = time.monotonic() - t0
        if not ready:
            src.shutdown()
            pytest.fail(f"the agent never reached wait-go:\n{src.sink.text()[-3000:]}")
        t1 = time.monotonic()
        src.pause()
        snap = src.create_snapshot()
        figures["pause_and_snapshot"] = time.monotonic() - t1
        before = src.sink.text()
        src.shutdown()
        (d / "console-source.log").write_text(before)
        delete_link(ns_src.name, TAP_SRC)

        # -- restore into a new jailed VMM on a new TAP in a new namespace -------------------
        ns_dst.create_tap(TAP_DST)
        ns_dst.add_address(TAP_DST, HOST_IP, PREFIX)
        servers["udp"] = udp_echo(ns_dst.socket, UDP_PORT)
        servers["tcp"] = tcp_echo(ns_dst.socket, TCP_PORT)
        overrides = {"network_overrides": [{"iface_id": "eth0", "host_dev_name": TAP_DST,
                                            "netns": ns_dst.name, "guest_mac": CLONE_MAC}],
                     "vsock_override": {"uds_path": uds_dst}}
        t2 = time.monotonic()
        dst = JailedVm.restore(str(files["state"]), str(files["mem"]), overrides=overrides,
                               vm_id="agent-snap-dst", jail_base=jail_base,
                               metadata=METADATA)
        dst.start()
        figures["restore_to_running"] = time.monotonic() - t2
        servers["vsock"] = unix_echo(dst.guest_vsock_path(VSOCK_PORT))
        os.chmod(dst.guest_vsock_path(VSOCK_PORT), 0o666)
        helper = start_host_thread(dst.sink, ns_dst, uds_dst, GUEST_IP, LISTEN_PORT,
                                   HOST_PAYLOAD, host, stop)
        go_reply = _send_go(uds_dst, figures)
        figures["restore_to_go_answered"] = time.monotonic() - t2
        if dst.wait(RUN_BUDGET) is None:
            dst.stop(f"timeout after {RUN_BUDGET}s")
        result = dst.shutdown()
        figures["restore_to_agent_done"] = time.monotonic() - t2
        stop.set()
        helper.join(30)
        after = dst.sink.text()
        (d / "console-restored.log").write_text(after)
        (d / "figures.json").write_text(json.dumps({"figures": figures, "snapshot": snap},
                                                   indent=1))
        print(f"\nagent snapshot figures: {json.dumps(figures)}\n"
              f"snapshot: {json.dumps(snap)}\nrestored phases: "
              f"{json.dumps(dst.stats().get('phases', {}))}")
        yield SnapshotRun(before, after, parse_results(after), src, dst, result, snap,
                          figures, go_reply, host, servers, files,
                          {"data_crc": crc32_hex(data), "data_size": len(data)})
    finally:
        stop.set()
        for s in servers.values():
            s.close()
        for ns, tap in ((ns_src, TAP_SRC), (ns_dst, TAP_DST)):
            try:
                delete_link(ns.name, tap)
            except Exception:
                pass
            ns.close()


def _ok(run: SnapshotRun, check: str):
    r = run.results.get(check)
    assert r is not None, f"no result line for {check}; console tail:\n{run.after[-3000:]}"
    assert r.status == "OK", f"AGENT {check} {r.status} {r.detail}"
    return r


def test_snapshot_taken_while_the_agent_waits(snapshot_run):
    before = snapshot_run.before
    assert f"AGENT START {CHECKS}" in before
    assert f"AGENT wait-go READY {GO_PORT}" in before
    assert parse_results(before) == {}, "a check finished before the snapshot"
    assert snapshot_run.snapshot["memory_bytes"] == 256 << 20
    # the memory file is sparse: only what the guest touched was written
    assert 0 < snapshot_run.snapshot["memory_written_bytes"] < 256 << 20
    assert snapshot_run.files["mem"].stat().st_size == 256 << 20


def test_restored_vm_ran_every_check_without_booting(snapshot_run):
    after = snapshot_run.after
    assert "AGENT DONE" in after, after[-3000:]
    assert "AGENT START" not in after and "Linux version" not in after   # no second boot
    assert set(snapshot_run.results) == set(CHECKS.split(",")), snapshot_run.results
    assert snapshot_run.exit.reason is ExitReason.GUEST_RESET, snapshot_run.exit
    phases = snapshot_run.restored.stats()["phases"]
    assert "load-state" in phases and "kernel" not in phases, phases


def test_go_reaches_the_listener_across_the_vsock_reset(snapshot_run):
    r = _ok(snapshot_run, "wait-go")
    assert snapshot_run.go_reply.startswith(b"GO")
    assert int(r.fields["port"]) == GO_PORT


def test_blk_read_after_restore_matches_the_host_file(snapshot_run):
    r = _ok(snapshot_run, "blk-read")
    assert int(r.fields["size"]) == snapshot_run.expect["data_size"]
    assert r.fields["crc32"] == snapshot_run.expect["data_crc"]


def test_blk_write_after_restore_lands_in_the_disk_file(snapshot_run):
    _ok(snapshot_run, "blk-write")
    raw = snapshot_run.files["scratch"].read_bytes()
    want = (PATTERN * (WRITE_LEN // len(PATTERN) + 1)).encode()[:WRITE_LEN]
    assert raw[WRITE_OFF:WRITE_OFF + WRITE_LEN] == want
    assert raw[:WRITE_OFF] == bytes(WRITE_OFF)
    assert raw[WRITE_OFF + WRITE_LEN:] == bytes(len(raw) - WRITE_OFF - WRITE_LEN)


def test_udp_and_tcp_go_through_the_new_tap(snapshot_run):
    _ok(snapshot_run, "udp")
    _ok(snapshot_run, "tcp")
    # the echo servers live only in the new namespace, behind the new TAP
    assert b"nodesvc-agent udp" in snapshot_run.servers["udp"].received
    assert b"nodesvc-agent tcp\n" in snapshot_run.servers["tcp"].received


def test_mmds_v2_serves_the_restored_vm(snapshot_run):
    """The interface still answers for the MMDS after the restore (the snapshot carried the
    mmds-config), with the document the new VMM was given and a token issued by it."""
    r = _ok(snapshot_run, "mmds")
    assert (r.fields["noauth"], r.fields["status"]) == ("401", "200")
    assert r.fields["crc32"] == crc32_hex(MMDS_VALUE.encode())
    assert snapshot_run.restored.config.mmds.version == "V2"


def test_host_pings_the_restored_guest(snapshot_run):
    assert snapshot_run.host.ready_seen, snapshot_run.host
    assert not snapshot_run.host.errors, snapshot_run.host.errors
    assert snapshot_run.host.ping_rtt is not None, "no ICMP echo reply from the restored guest"


def test_vsock_both_ways_after_the_restore(snapshot_run):
    _ok(snapshot_run, "vsock-connect")
    assert b"nodesvc-agent vsock\n" in snapshot_run.servers["vsock"].received
    r = _ok(snapshot_run, "vsock-listen")
    assert snapshot_run.host.connect_line.startswith(b"OK "), snapshot_run.host
    assert snapshot_run.host.echo == HOST_PAYLOAD
    assert int(r.fields["echo"]) == len(HOST_PAYLOAD)


def test_rng_served_by_the_restored_device(snapshot_run):
    r = _ok(snapshot_run, "rng")
    assert int(r.fields["bytes"]) == 64
    assert snapshot_run.restored.devices.get("virtio-rng", "entropy").bytes_served >= 64
