"""MMDS in the VMM without root: the net device's detour and timer (a socketpair for the
TAP, hand-built frames), the mmds-config section, the Put/PatchMetadata handlers and
`nodesvc-vmm --metadata`. Real clients through the device: tests/net/test_mmds_device.py."""

import argparse
import json
import os
import socket
import time

import pytest

from nodesvc.mmds import V1, V2
from nodesvc.mmds.config import MmdsConfig
from nodesvc.mmds.tcp import ACK, SYN
from nodesvc.mmds.vm import VmMmds
from nodesvc.testing import CountingIrq, FakeLimiter, GuestDriver, ManualLoop
from nodesvc.vmm import actions as A
from nodesvc.vmm import cli, control
from nodesvc.vmm.config import parse_config
from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.memory import GuestMemory
from nodesvc.vmm.process import VmmProcess
from nodesvc.vmm.virtio import VirtioMmioTransport, constants as V
from nodesvc.vmm.virtio.boundary import DeviceLoop, ErrorBoundary
from nodesvc_virtio_net import VirtioNet
from nodesvc_virtio_net import constants as C

from tests.unit.test_mmds_stack import GUEST_MAC, arp_request, parse_out, tcp_frame
from tests.unit.test_virtio_net import PairTap

DOC = {"latest": {"meta-data": {"ami-id": "ami-1"}}}
HDR = bytes(12)


@pytest.fixture
def net():
    """A VirtioNet serving MMDS for "eth0", driven in process; yields a small harness."""
    mem, tap, loop = GuestMemory(8 << 20), PairTap(), ManualLoop()
    vm_mmds = VmMmds(MmdsConfig(("eth0",)), "unit-vm")
    vm_mmds.mmds.put(DOC)
    boundary = ErrorBoundary("virtio-net:eth0")
    limiter = FakeLimiter(ops=0)            # would refuse anything it were asked about
    dev = VirtioNet(tap, DeviceLoop(loop, boundary), mac=GUEST_MAC, tx_limiter=limiter,
                    mmds_stack=vm_mmds.stack_factory("eth0"))
    t = VirtioMmioTransport(dev, memory=mem, irq=CountingIrq(), event_loop=loop,
                            boundary=boundary)
    drv = GuestDriver(t, mem)
    drv.init(features=(1 << V.F_VERSION_1) | (1 << C.F_MAC))
    loop.run_once()

    class H:
        pass
    h = H()
    h.mem, h.tap, h.loop, h.dev, h.drv, h.t, h.limiter = mem, tap, loop, dev, drv, t, limiter
    h.vm_mmds = vm_mmds
    h.rxq, h.txq = drv.queues[C.RX_QUEUE], drv.queues[C.TX_QUEUE]
    h.bufs = {}

    def send(frame, used=1):
        addr = drv.alloc(len(HDR) + len(frame))
        mem.write(addr, HDR + frame)
        h.txq.add([(addr, len(HDR) + len(frame))], [])
        h.txq.kick()
        assert len(h.txq.take_used()) == used

    def post_rx(n=4):
        for _ in range(n):
            addr = drv.alloc(2048)
            h.bufs[h.rxq.add([], [(addr, 2048)])] = addr
        h.rxq.kick()

    def received():
        return [mem.read(h.bufs[head] + 12, n - 12) for head, n in h.rxq.take_used()]
    h.send, h.post_rx, h.received = send, post_rx, received
    yield h
    t.close()
    dev.close()
    loop.close()
    mem.close()


def tap_silent(tap) -> bool:
    tap.peer.setblocking(False)
    try:
        tap.peer.recv(65536)
    except BlockingIOError:
        return True
    return False


def test_arp_for_mmds_is_answered_into_rx_and_never_reaches_the_tap(net):
    net.post_rx()
    net.send(arp_request())
    (reply,) = net.received()
    assert reply[:6] == GUEST_MAC and reply[12:14] == b"\x08\x06" and reply[21] == 2  # ARP reply
    assert net.dev.stats.tx_mmds == 1 and net.dev.stats.rx_mmds == 1
    assert net.dev.stats.tx_packets == 0 and tap_silent(net.tap)
    assert not net.limiter.blocked      # the tx limiter was never asked


def test_a_frame_for_another_address_still_goes_to_the_tap_through_the_limiter(net):
    net.send(arp_request(tpa="192.0.2.1"), used=0)
    assert net.dev.stats.tx_throttled == 1 and net.limiter.blocked   # asked, and refused
    assert net.dev.stats.tx_mmds == 0


def test_answers_wait_in_the_stack_until_the_guest_posts_buffers(net):
    net.send(tcp_frame(40000, 1000, 0, SYN, mss=1460))
    assert net.received() == [] and net.dev.mmds._armed is None     # no buffer: no timer spin
    net.post_rx(2)
    (synack,) = net.received()
    seg = parse_out(synack)
    assert seg.flags == SYN | ACK and seg.ack == 1001
    # its retransmission is due in 300 ms and a buffer is left: the timer is armed for it
    assert net.dev.mmds._armed is not None and net.dev.mmds._armed > time.monotonic()


def test_rto_timer_fires_on_the_device_loop_and_retransmits(net):
    net.post_rx(2)
    net.send(tcp_frame(40001, 5000, 0, SYN, mss=1460))
    first = net.received()
    assert len(first) == 1
    got = []
    net.loop.run_until(lambda: got.extend(net.received()) or got, timeout=3)
    assert parse_out(got[0]).flags == SYN | ACK      # the same SYN-ACK, sent again


def test_reset_forgets_connections_keeps_the_document(net):
    net.post_rx(1)
    net.send(tcp_frame(40002, 1, 0, SYN))
    first = net.dev.mmds.stack
    assert first.tcp.connections
    net.t.write(V.STATUS, 4, 0)             # the driver resets the device
    assert net.dev.mmds.stack is None
    net.drv.init(features=(1 << V.F_VERSION_1) | (1 << C.F_MAC))
    net.loop.run_once()
    assert net.dev.mmds.stack is not first and not net.dev.mmds.stack.tcp.connections
    assert net.vm_mmds.mmds.store.document == DOC


def test_only_listed_interfaces_serve_and_randomness_is_drawn_once():
    drawn = []
    vm = VmMmds(MmdsConfig(("eth0",), V2, "169.254.1.2"), "vm",
                urandom=lambda n: drawn.append(n) or os.urandom(n))
    assert vm.stack_factory("eth1") is None and VmMmds(None).stack_factory("eth0") is None
    make = vm.stack_factory("eth0")
    a, b = make(), make()
    assert a.ip == "169.254.1.2" and a.mmds is b.mmds is vm.mmds and vm.mmds.version == V2
    assert drawn == [32]                 # ISN secret; the token key comes from Mmds itself
    isns = {a.tcp._isn(), b.tcp._isn(), a.tcp._isn()}
    assert len(isns) == 3                # one generator: no ISN repeats across stacks


# --- mmds-config in the VM config ----------------------------------------------------------

@pytest.fixture
def kernel(tmp_path):
    p = tmp_path / "vmlinux"
    p.write_bytes(b"\x7fELF" + bytes(0x300))
    return str(p)


def vm_cfg(kernel, **sections):
    return {"boot-source": {"kernel_image_path": kernel},
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}], **sections}


def test_mmds_config_section(kernel):
    c = parse_config(vm_cfg(kernel, **{"mmds-config": {"version": "V2",
                                                        "network_interfaces": ["eth0"]}}),
                     host_mem_bytes=1 << 40)
    assert c.mmds == MmdsConfig(("eth0",), V2)
    assert parse_config(vm_cfg(kernel), host_mem_bytes=1 << 40).mmds is None
    for bad, words in (({"network_interfaces": ["eth1"]}, "eth1 is not a configured"),
                       ({"network_interfaces": []}, "is empty"),
                       ({"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"},
                        "169.254.0.0/16"),
                       ({"network_interfaces": ["eth0"], "version": "V3"}, "version")):
        with pytest.raises(ConfigError, match=words):
            parse_config(vm_cfg(kernel, **{"mmds-config": bad}), host_mem_bytes=1 << 40)


# --- the VMM's metadata actions ---------------------------------------------------------------

@pytest.fixture
def proc(tmp_path, kernel):
    args = argparse.Namespace(id="unit-vm", config_file=None,
                              control_socket=str(tmp_path / "c.sock"), console_fifo=None,
                              log_fifo=None, metrics_fifo=None, exit_file=None,
                              metrics_interval=0, log_level="info")
    p = VmmProcess(args)
    p.cfg = parse_config(vm_cfg(kernel, **{"mmds-config": {"network_interfaces": ["eth0"]}}),
                         host_mem_bytes=1 << 40)
    yield p
    p.close()
    os.close(p.wake_r)
    os.close(p.wake_w)


def ask(proc, action) -> dict:
    return proc.handle_line(control.encode(A.encode_request(action, 1))[:-1])


def test_metadata_actions_before_start(proc):
    assert {"put_metadata", "patch_metadata"} <= set(A.names(proc.handlers))
    r = ask(proc, A.PatchMetadata({"a": 1}))
    assert r["kind"] == A.WRONG_STATE and "not initialized" in r["error"]
    assert ask(proc, A.PutMetadata(DOC))["ok"]
    assert ask(proc, A.PatchMetadata({"latest": {"user-data": "x"}}))["ok"]
    store = proc.vm.mmds.mmds.store     # the VM object exists; nothing is built yet
    assert store.document["latest"]["user-data"] == "x" and proc.vm.kvm is None
    r = ask(proc, A.PutMetadata({"big": "x" * 60000}))
    assert r["kind"] == A.BAD_REQUEST and "51200" in r["error"]
    assert store.document["latest"]["meta-data"] == DOC["latest"]["meta-data"]   # unchanged


# --- nodesvc-vmm --metadata --------------------------------------------------------------------

def test_cli_metadata_file(tmp_path):
    good = tmp_path / "m.json"
    good.write_text(json.dumps(DOC))
    assert cli.load_metadata(str(good)) == DOC and cli.load_metadata(None) is None
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="--metadata: .*not valid JSON"):
        cli.load_metadata(str(bad))
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"x": "y" * 60000}))
    with pytest.raises(ConfigError, match="51200"):
        cli.load_metadata(str(big))
    with pytest.raises(ConfigError, match="cannot read"):
        cli.load_metadata(str(tmp_path / "missing.json"))
    assert cli.build_parser().parse_args(["--metadata", "m.json"]).metadata == "m.json"
