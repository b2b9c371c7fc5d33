"""ONE Linux boot with every device at once, driven by the in-guest agent (guest/agent/).

Guest user space cannot run on the nested-KVM hosts, so the default guest kernel carries a
dormant test agent; `nodesvc_agent.checks=...` wakes it. It runs the checks against the real
Linux drivers and network stack, prints `AGENT <check> OK|FAIL <detail>` per check and
`AGENT DONE`, then resets the VM. Meanwhile the host side runs UDP/TCP echo servers inside a
network namespace (the TAP lives there), a vsock listener on `<uds_path>_<port>`, and a
thread that pings the guest and opens a host-initiated vsock stream while the agent listens.
The VMM's MMDS (V2) serves eth0 with a document put before the boot; the agent reads it.
Each test below asserts one check's line *and* the host-side fact it stands for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest

from nodesvc.net.netns import NetNamespace, delete_link
from nodesvc.vmm import cmdline as cmdline_mod
from nodesvc.vmm.config import DeviceSpec, load_config_file
from nodesvc.testing.jailed import JailedVm
from nodesvc.vmm.exits import ExitReason, VmExit

from tests.linux.agent_host import (HostSide, build_agent_kernel, crc32_hex,
                                    missing_host_capability, parse_results, start_host_thread,
                                    tcp_echo, udp_echo, unix_echo)

pytestmark = [pytest.mark.kvm, pytest.mark.linux]

#: ~20-40 s on an idle nested-KVM host; CI hosts are noisy.
BOOT_BUDGET = 240
HOST_IP, GUEST_IP, PREFIX = "192.0.2.1", "192.0.2.2", 24
GUEST_MAC = "06:00:c0:00:02:02"
TAP = "agtap0"
UDP_PORT, TCP_PORT = 5301, 5302
VSOCK_CID, VSOCK_PORT, LISTEN_PORT = 3, 5201, 5202
HOST_PAYLOAD = b"nodesvc host->guest vsock\n"
# blk-write: the agent repeats PATTERN to WRITE_LEN bytes at WRITE_OFF
WRITE_OFF, WRITE_LEN, PATTERN = 8192, 4096, "nodesvc-agent-wrote-this"
# blk-throttle at 512 KiB/s. Token buckets have Firecracker's semantics: one starts full,
# and the first miss after an idle stretch longer than refill_time refills it completely
# (the refill is computed lazily from the last update). So the first 2 x BUCKET bytes pass
# unthrottled; the agent reads them untimed (throttle_warmup), then times THROTTLE_BYTES.
# REFILL_MS > the limiter's 100 ms retry timer and BUCKET >= chunk + 100 ms of refill, so
# neither the retry granularity nor the bucket cap loses tokens in the steady state.
BUCKET, REFILL_MS = 128 << 10, 250
RATE = BUCKET * 1000 / REFILL_MS              # bytes per second
WARMUP, THROTTLE_BYTES = 2 * BUCKET, 1536 << 10   # ~3 s at the limit
# mmds: the V2 flow against the VMM's metadata service on eth0 (after tcp: the gateway,
# through which 169.254.169.254 is routed, is in the ARP cache by then)
MMDS_VALUE = f"nodesvc-mmds-{os.urandom(6).hex()}"
METADATA = {"latest": {"meta-data": {"agent-check": MMDS_VALUE, "other": "x"}}}
CHECKS = ("boot-timer,blk-read,blk-write,ext4,blk-throttle,rng,udp,tcp,mmds,"
          "vsock-connect,vsock-listen")


@dataclass
class AgentBoot:
    vm: JailedVm
    text: str             # the whole console output
    exit: VmExit
    elapsed: float
    results: dict
    host: HostSide
    files: dict           # name -> path of the host files behind the drives
    expect: dict          # name -> host-side facts computed before the boot
    servers: dict         # name -> echo server (what it received)


def _make_ext4(dirpath, image, payload: bytes) -> None:
    src = dirpath / "ext4-src"
    src.mkdir()
    (src / "hello.txt").write_bytes(payload)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "agent", "-d", str(src), str(image), "2M"],
                   check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _boot_args() -> str:
    agent = {
        "checks": CHECKS, "timeout": 30, "deadline": 200,
        "read_dev": "vda", "write_dev": "vdb", "write_off": WRITE_OFF,
        "write_len": WRITE_LEN, "pattern": PATTERN, "ext4_dev": "vdc",
        "ext4_file": "hello.txt", "throttle_dev": "vdd", "throttle_bytes": THROTTLE_BYTES,
        "throttle_warmup": WARMUP,
        "host": HOST_IP, "udp_port": UDP_PORT, "tcp_port": TCP_PORT,
        "vsock_port": VSOCK_PORT, "listen_port": LISTEN_PORT, "rng_bytes": 64,
        "mmds_path": "/latest/meta-data/agent-check", "mmds_expect": MMDS_VALUE,
    }
    return " ".join([cmdline_mod.DEFAULT_BOOT_ARGS,
                     f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off",
                     *(f"nodesvc_agent.{k}={v}" for k, v in agent.items())])


@pytest.fixture(scope="module")
def agent_kernel(guest_kernel):
    return build_agent_kernel(), guest_kernel[1]


@pytest.fixture(scope="module")
def agent_boot(agent_kernel, tmp_path_factory, jail_base):
    missing = missing_host_capability()
    if missing:
        pytest.skip(missing)
    if not shutil.which("mkfs.ext4"):   # a set-up step, never installed by a test
        pytest.fail("mkfs.ext4 (e2fsprogs) is missing: run `make sysdeps` "
                    "(scripts/install-sysdeps, as root)")
    kernel, initramfs = agent_kernel
    d = tmp_path_factory.mktemp("agent")
    files = {"data": d / "data.img", "scratch": d / "scratch.img", "ext4": d / "ext4.img",
             "throttle": d / "throttle.img"}
    data = os.urandom(256 << 10)
    files["data"].write_bytes(data)
    files["scratch"].write_bytes(bytes(64 << 10))
    ext4_payload = os.urandom(10_000) + b"\nnodesvc ext4 file\n"
    _make_ext4(d, files["ext4"], ext4_payload)
    files["throttle"].write_bytes(bytes(WARMUP + THROTTLE_BYTES))
    expect = {"data_crc": crc32_hex(data), "data_size": len(data),
              "ext4_crc": crc32_hex(ext4_payload), "ext4_size": len(ext4_payload)}
    uds = str(d / "v.sock")

    vm_json = {
        "boot-source": {"kernel_image_path": str(kernel), "initrd_path": str(initramfs),
                        "boot_args": _boot_args()},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
        "drives": [
            {"drive_id": "data", "path_on_host": str(files["data"]), "is_root_device": False,
             "is_read_only": True},
            {"drive_id": "scratch", "path_on_host": str(files["scratch"]),
             "is_root_device": False, "cache_type": "Writeback"},
            {"drive_id": "ext4", "path_on_host": str(files["ext4"]), "is_root_device": False,
             "is_read_only": True},
            {"drive_id": "throttled", "path_on_host": str(files["throttle"]),
             "is_root_device": False, "is_read_only": True,
             "rate_limiter": {"bandwidth": {"size": BUCKET, "refill_time": REFILL_MS,
                                            "one_time_burst": 0}}},
        ],
        "vsock": {"guest_cid": VSOCK_CID, "uds_path": uds},
        "entropy": {},
        "mmds-config": {"version": "V2", "network_interfaces": ["eth0"]},
    }

    ns = NetNamespace("agent")
    servers, stop, host = {}, threading.Event(), HostSide()
    try:
        ns.create_tap(TAP)
        ns.add_address(TAP, HOST_IP, PREFIX)
        vm_json["network-interfaces"] = [{"iface_id": "eth0", "host_dev_name": TAP,
                                          "guest_mac": GUEST_MAC, "netns": ns.name}]
        (d / "vm.json").write_text(json.dumps(vm_json, indent=1))
        cfg = load_config_file(str(d / "vm.json"))
        cfg.devices.append(DeviceSpec("boot-timer", {}))

        servers["udp"] = udp_echo(ns.socket, UDP_PORT)
        servers["tcp"] = tcp_echo(ns.socket, TCP_PORT)
        # jailed, as the node runs it: the guest's own vsock connections land in its jail's
        # run dir, at a listener the VM's unprivileged uid may connect to
        vm = JailedVm(cfg, vm_id="agent-boot", jail_base=jail_base, metadata=METADATA)
        sink = vm.sink
        t0 = time.monotonic()
        vm.start()
        servers["vsock"] = unix_echo(vm.guest_vsock_path(VSOCK_PORT))
        os.chmod(vm.guest_vsock_path(VSOCK_PORT), 0o666)
        helper = start_host_thread(sink, ns, uds, GUEST_IP, LISTEN_PORT, HOST_PAYLOAD, host,
                                   stop)
        if vm.wait(BOOT_BUDGET) is None:
            vm.stop(f"timeout after {BOOT_BUDGET}s")
        result = vm.shutdown()
        elapsed = time.monotonic() - t0
        stop.set()
        helper.join(30)
        text = sink.text()
        (d / "console.log").write_text(text)    # for post-mortems
        yield AgentBoot(vm, text, result, elapsed, parse_results(text), host, files, expect,
                        servers)
    finally:
        stop.set()
        for s in servers.values():
            s.close()
        try:
            delete_link(ns.name, TAP)
        finally:
            ns.close()


def _ok(boot: AgentBoot, check: str):
    r = boot.results.get(check)
    assert r is not None, f"no result line for {check}; console tail:\n{boot.text[-3000:]}"
    assert r.status == "OK", f"AGENT {check} {r.status} {r.detail}"
    return r


def test_agent_ran_every_check_and_reset_the_vm(agent_boot):
    text = agent_boot.text
    assert "AGENT DONE" in text, text[-3000:]
    assert f"AGENT START {CHECKS}" in text
    assert set(agent_boot.results) == set(CHECKS.split(",")), agent_boot.results
    assert text.index("AGENT DONE") > max(text.index(f"AGENT {c} ") for c in CHECKS.split(","))
    assert "Run /init" not in text    # the agent restarts the VM before user space
    assert agent_boot.exit.reason is ExitReason.GUEST_RESET, agent_boot.exit


def test_blk_read_checksum_matches_the_host_file(agent_boot):
    r = _ok(agent_boot, "blk-read")
    assert int(r.fields["size"]) == agent_boot.expect["data_size"]
    assert r.fields["crc32"] == agent_boot.expect["data_crc"]


def test_blk_write_lands_in_the_host_file(agent_boot):
    r = _ok(agent_boot, "blk-write")
    assert (int(r.fields["offset"]), int(r.fields["len"])) == (WRITE_OFF, WRITE_LEN)
    raw = agent_boot.files["scratch"].read_bytes()
    want = (PATTERN * (WRITE_LEN // len(PATTERN) + 1)).encode()[:WRITE_LEN]
    assert raw[WRITE_OFF:WRITE_OFF + WRITE_LEN] == want
    assert raw[:WRITE_OFF] == bytes(WRITE_OFF) and raw[WRITE_OFF + WRITE_LEN:].count(0) == \
        len(raw) - WRITE_OFF - WRITE_LEN     # nothing else changed


def test_ext4_mount_and_file_checksum(agent_boot):
    r = _ok(agent_boot, "ext4")
    assert int(r.fields["size"]) == agent_boot.expect["ext4_size"]
    assert r.fields["crc32"] == agent_boot.expect["ext4_crc"]
    assert "EXT4-fs (vdc): mounted filesystem" in agent_boot.text


def test_throttled_drive_runs_at_its_limit(agent_boot):
    r = _ok(agent_boot, "blk-throttle")
    nbytes, seconds = int(r.fields["bytes"]), int(r.fields["ns"]) / 1e9
    assert (nbytes, int(r.fields["warmup"])) == (THROTTLE_BYTES, WARMUP)
    measured = nbytes / seconds
    assert abs(measured - RATE) <= 0.15 * RATE, \
        f"{measured / 1024:.0f} KiB/s over {seconds:.2f}s, limit {RATE / 1024:.0f} KiB/s"


def test_udp_echo_through_the_tap(agent_boot):
    r = _ok(agent_boot, "udp")
    assert r.fields["echo"] == str(len(b"nodesvc-agent udp"))
    assert b"nodesvc-agent udp" in agent_boot.servers["udp"].received


def test_tcp_echo_through_the_tap(agent_boot):
    _ok(agent_boot, "tcp")
    assert b"nodesvc-agent tcp\n" in agent_boot.servers["tcp"].received


def test_mmds_v2_token_flow_from_the_guest(agent_boot):
    """PUT /latest/api/token, a GET without the token (401), a GET with it: the body is
    the document's leaf as IMDS text, read by the guest's own TCP stack."""
    r = _ok(agent_boot, "mmds")
    assert int(r.fields["token"]) == 48          # base64 of 36 bytes (docs/mmds.md)
    assert r.fields["noauth"] == "401"
    assert r.fields["status"] == "200"
    assert int(r.fields["len"]) == len(MMDS_VALUE)
    assert r.fields["crc32"] == crc32_hex(MMDS_VALUE.encode())
    # the net device took those frames off TX for its MMDS stack (they never reach the TAP)
    # and put the stack's answers into the guest's RX
    counters = agent_boot.vm.devices.get("virtio-net", "eth0").counters
    assert counters["tx_mmds"] > 0 and counters["rx_mmds"] > 0, counters


def test_host_pings_the_guest(agent_boot):
    assert agent_boot.host.ready_seen, agent_boot.host
    assert not agent_boot.host.errors, agent_boot.host.errors
    assert agent_boot.host.ping_rtt is not None, "no ICMP echo reply from the guest"


def test_vsock_guest_to_host_echo(agent_boot):
    _ok(agent_boot, "vsock-connect")
    assert b"nodesvc-agent vsock\n" in agent_boot.servers["vsock"].received


def test_vsock_host_to_guest_echo(agent_boot):
    r = _ok(agent_boot, "vsock-listen")
    assert agent_boot.host.connect_line.startswith(b"OK "), agent_boot.host
    assert int(agent_boot.host.connect_line.split()[1]) >= 1 << 30
    assert agent_boot.host.echo == HOST_PAYLOAD
    assert int(r.fields["echo"]) == len(HOST_PAYLOAD)


def test_rng_bytes_come_from_the_device(agent_boot):
    r = _ok(agent_boot, "rng")
    assert int(r.fields["bytes"]) == 64
    assert agent_boot.vm.devices.get("virtio-rng", "entropy").bytes_served >= 64


def test_boot_timer_recorded(agent_boot):
    _ok(agent_boot, "boot-timer")
    boot_time = agent_boot.vm.devices.get("boot-timer", "boot-timer").boot_time
    assert boot_time is not None and 0 < boot_time < agent_boot.elapsed
