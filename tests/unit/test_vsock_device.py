"""vsock plugin: config validation, registration, conformance, packet parsing."""

import os
import shutil
import socket
import tempfile
from types import SimpleNamespace

import pytest
from hypothesis import given, settings, strategies as st
from nodesvc.testing import CountingIrq, GuestDriver, InlineLoop, VirtioConformance

from nodesvc.plugins import PluginManager
from nodesvc.vmm.errors import ConfigError
from nodesvc.vmm.memory import GuestMemory
from nodesvc.vmm.virtio import VirtioMmioTransport, constants as V
from nodesvc_vsock import VsockDevice, validate
from nodesvc_vsock.packet import HDR_SIZE, MAX_PKT_PAYLOAD, OP_RW, Header, RxBuffer, parse_tx
from nodesvc_vsock.plugin import VsockKind, attach
from nodesvc_vsock.uds import parse_connect


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="vsk", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


# -- configuration --------------------------------------------------------------------------

def test_valid_configs(sockdir):
    validate({"guest_cid": 3, "uds_path": f"{sockdir}/v.sock"})
    validate({"guest_cid": 0xFFFF_FFFE, "uds_path": f"{sockdir}/v.sock", "vsock_id": "vsock0"})


@pytest.mark.parametrize("cfg, msg", [
    ("nope", "vsock: must be an object"),
    ({"guest_cid": 3, "uds_path": "{d}/v", "cid": 4}, "vsock.cid: unknown key"),
    ({"uds_path": "{d}/v"}, "vsock.guest_cid: required key is missing"),
    ({"guest_cid": 3}, "vsock.uds_path: required key is missing"),
    ({"guest_cid": 2, "uds_path": "{d}/v"}, "vsock.guest_cid: must be an integer from 3"),
    ({"guest_cid": True, "uds_path": "{d}/v"}, "vsock.guest_cid: must be an integer"),
    ({"guest_cid": "3", "uds_path": "{d}/v"}, "vsock.guest_cid: must be an integer"),
    ({"guest_cid": 1 << 32, "uds_path": "{d}/v"}, "vsock.guest_cid: must be an integer"),
    ({"guest_cid": 3, "uds_path": 5}, "vsock.uds_path: must be a non-empty string"),
    ({"guest_cid": 3, "uds_path": ""}, "vsock.uds_path: must be a non-empty string"),
    ({"guest_cid": 3, "uds_path": "{d}/missing/v"}, "vsock.uds_path: directory"),
    ({"guest_cid": 3, "uds_path": "{d}/" + "x" * 120}, "vsock.uds_path: longer than 107"),
    ({"guest_cid": 3, "uds_path": "{d}/file"}, "vsock.uds_path: {d}/file exists and is not"),
    ({"guest_cid": 3, "uds_path": "{d}/v", "vsock_id": 1}, "vsock.vsock_id: must be a string"),
])
def test_validate_refuses_with_one_line(sockdir, cfg, msg):
    open(os.path.join(sockdir, "file"), "w").close()
    if isinstance(cfg, dict):
        cfg = {k: v.format(d=sockdir) if isinstance(v, str) else v for k, v in cfg.items()}
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(msg.format(d=sockdir)) and "\n" not in str(e.value)


def test_registered_through_entry_point():
    reg = PluginManager().device_registry()
    assert "vsock" in reg and reg.get("vsock") is VsockKind and VsockKind.validate is validate


def test_config_file_section_reaches_validate(sockdir):
    from nodesvc.vmm.config import parse_config
    kernel = os.path.join(sockdir, "vmlinux")
    with open(kernel, "wb") as f:  # the config check only looks for the ELF magic
        f.write(b"\x7fELF\x02\x01\x01" + bytes(57))
    cfg = parse_config({"boot-source": {"kernel_image_path": kernel},
                        "vsock": {"guest_cid": 1, "uds_path": f"{sockdir}/v.sock"}})
    (spec,) = [d for d in cfg.devices if d.kind == "vsock"]
    with pytest.raises(ConfigError, match="guest_cid"):
        validate(spec.config)


def test_attach_replaces_stale_socket_and_plugs_in(sockdir):
    path = f"{sockdir}/v.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # left behind by a VMM that died
    stale.close()
    added = []
    ctx = SimpleNamespace(event_loop=InlineLoop(),
                          add_virtio_device=lambda dev, name: added.append((dev, name)) or "T")
    dev = attach(ctx, {"guest_cid": 7, "uds_path": path, "vsock_id": "vs0"})
    try:
        assert added == [(dev, "vs0")] and dev.transport == "T"
        c = socket.socket(socket.AF_UNIX)
        c.connect(path)  # listening
        c.close()
    finally:
        dev.close()
    assert not os.path.exists(path)


# -- conformance ----------------------------------------------------------------------------

class TestVsockConformance(VirtioConformance):
    expected_device_id = 19
    processed_on_kick = (0, 1, 2)  # RX and event chains are taken (and checked) on kick too

    def make_device(self, tmp_path):
        return VsockDevice(3, str(tmp_path / "v.sock"), InlineLoop())

    def test_config_space_and_features(self, tmp_path):
        mem = GuestMemory(8 << 20)
        dev = VsockDevice(0x1_2345_6789 & 0xFFFF_FFFF, str(tmp_path / "c.sock"), InlineLoop())
        t = VirtioMmioTransport(dev, memory=mem, irq=CountingIrq(), event_loop=InlineLoop())
        try:
            assert t.read(V.CONFIG, 4) == 0x2345_6789 and t.read(V.CONFIG + 4, 4) == 0
            feats = GuestDriver(t, mem).device_features()
            assert feats & ~V.TRANSPORT_FEATURES == 0 and feats >> V.F_VERSION_1 & 1
            assert dev.queue_sizes == (256, 256, 256)
        finally:
            t.close()
            t.device.close()  # the transport releases its fds; the device is its owner's
            mem.close()


# -- packets --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mem():
    m = GuestMemory(4 << 20)
    yield m
    m.close()


def _chain(mem, raw: bytes, cuts: list[int], base=0x10000, writable=False):
    """Put `raw` in guest memory split at `cuts`, each piece in its own (spaced) buffer;
    the chain as FastRing.pop() returns it: (head, readable, writable) (gpa, len) lists."""
    bufs, pos, addr = [], 0, base
    for end in sorted(set(cuts)) + [len(raw)]:
        piece = raw[pos:end]
        mem.view(addr, len(piece))[:] = piece
        bufs.append((addr, len(piece)))
        addr += len(piece) + 64
        pos = end
    return (0, [], bufs) if writable else (0, bufs, [])


def _hdr(n, **kw):
    base = dict(src_cid=3, dst_cid=2, src_port=1, dst_port=2, len=n, type=1, op=OP_RW,
                flags=0, buf_alloc=4096, fwd_cnt=0)
    base.update(kw)
    return Header(**base)


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=3000), data=st.data())
def test_parse_tx_any_split(mem, payload, data):
    raw = _hdr(len(payload)).pack() + payload
    cuts = data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=5))
    hdr, views = parse_tx(mem, _chain(mem, raw, [c for c in cuts if c < len(raw)]))
    assert hdr == _hdr(len(payload)) and b"".join(bytes(v) for v in views) == payload


@pytest.mark.parametrize("raw", [
    b"\0" * 43,                                             # shorter than a header
    _hdr(10).pack() + b"x" * 9,                             # claims more than it carries
    _hdr(MAX_PKT_PAYLOAD + 1).pack() + b"x" * (MAX_PKT_PAYLOAD + 1),  # absurd length
])
def test_parse_tx_refuses_malformed(mem, raw):
    assert parse_tx(mem, _chain(mem, raw, [20])) is None


@settings(max_examples=40, deadline=None)
@given(payload=st.binary(min_size=1, max_size=2000), data=st.data())
def test_rx_buffer_scatter(mem, payload, data):
    size = HDR_SIZE + 2000
    cuts = data.draw(st.lists(st.integers(1, size - 1), max_size=4))
    chain = _chain(mem, b"\0" * size, cuts, base=0x40000, writable=True)
    a, b = socket.socketpair()
    try:
        a.sendall(payload)
        b.setblocking(False)
        buf = RxBuffer(mem, chain)
        n = buf.recv_from(b, len(payload))
        hdr = _hdr(n, op=OP_RW)
        assert n == len(payload) and buf.finish(hdr) == HDR_SIZE + n
        out = b"".join(bytes(mem.view(a, n)) for a, n in chain[2])
        assert out[:HDR_SIZE] == hdr.pack() and out[HDR_SIZE:HDR_SIZE + n] == payload
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("line, port", [
    (b"CONNECT 52\n", 52), (b"connect 1024\n", 1024), (b"CONNECT 4294967295\r\n", 0xFFFF_FFFF),
    (b"CONNECT 4294967296\n", None), (b"CONNECT\n", None), (b"LISTEN 5\n", None),
    (b"CONNECT \xd9\xa3\n", None), (b"CONNECT +5\n", None),
])
def test_parse_connect(line, port):
    assert parse_connect(line) == port
