"""mmds-config parsing, and hostile frames never breaking or growing the stack."""

import random

import pytest

from nodesvc.mmds import Mmds, MmdsStack, tcp
from nodesvc.mmds.config import MmdsConfig, check_interfaces, parse
from nodesvc.vmm.errors import ConfigError


def test_defaults_and_full_form():
    assert parse({"network_interfaces": ["eth0"]}) == MmdsConfig(("eth0",))
    cfg = parse({"version": "V2", "network_interfaces": ["eth0", "eth1", "eth0"],
                 "ipv4_address": "169.254.1.1", "imds_compat": True})
    assert cfg == MmdsConfig(("eth0", "eth1"), "V2", "169.254.1.1", True)


@pytest.mark.parametrize("bad, field", [
    ([], "mmds-config"),
    ({}, "network_interfaces: required"),
    ({"network_interfaces": []}, "is empty"),
    ({"network_interfaces": "eth0"}, "list of interface ids"),
    ({"network_interfaces": [""]}, "list of interface ids"),
    ({"network_interfaces": ["eth0"], "version": "v2"}, "version"),
    ({"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}, "169.254.0.0/16"),
    ({"network_interfaces": ["eth0"], "ipv4_address": "x"}, "ipv4_address"),
    ({"network_interfaces": ["eth0"], "imds_compat": "yes"}, "imds_compat"),
    ({"network_interfaces": ["eth0"], "port": 80}, "unknown key"),
])
def test_bad_configs_name_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        parse(bad)


def test_interfaces_must_exist():
    cfg = parse({"network_interfaces": ["eth0", "eth9"]})
    check_interfaces(parse({"network_interfaces": ["eth0"]}), ["eth0", "eth1"])
    with pytest.raises(ConfigError, match="eth9 is not a configured network interface"):
        check_interfaces(cfg, ["eth0"])


def _mutate(rng, frame: bytes) -> bytes:
    b = bytearray(frame)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        if op < 0.6 and len(b) > 14:
            b[rng.randrange(14, len(b))] = rng.randrange(256)
        elif op < 0.8:
            del b[rng.randrange(14, max(15, len(b))):]
        else:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    b[30:34] = bytes([169, 254, 169, 254])       # keep it addressed to MMDS
    return bytes(b)


def test_hostile_frames_never_raise_and_state_stays_bounded():
    from test_mmds_stack import arp_request, tcp_frame  # the frame builders (same dir)
    rng = random.Random(1234)
    clock = [0.0]
    mmds = Mmds(clock=lambda: clock[0])
    mmds.put({"k": "v" * 1000})
    stack = MmdsStack(mmds, clock=lambda: clock[0])
    seeds = [tcp_frame(rng.randrange(1, 65536), rng.randrange(2**32), 0, tcp.SYN, mss=100),
             tcp_frame(1234, 5, 6, tcp.ACK | tcp.PSH, b"GET /k HTTP/1.1\r\n\r\n"),
             tcp_frame(1234, 5, 6, tcp.FIN | tcp.ACK), arp_request()]
    for i in range(10000):
        seed = rng.choice(seeds)
        frame = _mutate(rng, seed) if rng.random() < 0.7 else tcp_frame(
            rng.randrange(1, 65536), rng.randrange(2**32), rng.randrange(2**32),
            rng.randrange(64), bytes(rng.randrange(256) for _ in range(rng.randrange(60))),
            rng.randrange(65536), mss=rng.choice([None, 0, 1, 65535]) if rng.random() < .3 else None)
        if stack.detour(frame):
            stack.handle(frame)
        for _ in range(rng.randrange(4)):
            stack.pending_rx()
        clock[0] += rng.random() * 0.05
        assert len(stack.tcp.connections) <= tcp.MAX_CONNECTIONS
        assert len(stack.tcp.resets) <= tcp.MAX_PENDING_RESETS
        assert all(len(c.rbuf) <= tcp.RCV_BUF_MAX_SIZE for c, _ in stack.tcp.connections.values())
    clock[0] += 3600
    for _ in range(100000):                   # everything times out or drains
        if stack.pending_rx() is None and stack.next_deadline() is None:
            break
        clock[0] += 1
    assert not stack.tcp.resets and stack.pending_rx() is None
