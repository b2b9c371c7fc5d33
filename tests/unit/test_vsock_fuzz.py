"""A guest sending arbitrary vsock packets never breaks the device (property-based)."""

import os
import shutil
import socket
import tempfile
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nodesvc_vsock.guest import Rig
from nodesvc_vsock.packet import MAX_PKT_PAYLOAD


@pytest.fixture(scope="module")
def world():
    d = tempfile.mkdtemp(prefix="vsk", dir="/tmp")
    rig = Rig(os.path.join(d, "v.sock"), tx_slots=128)
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(rig.uds_path + "_1234")
    lst.listen(256)
    lst.settimeout(0.2)
    stop, accepted = threading.Event(), []

    def serve():  # a host service that accepts everything and reads and discards it
        while not stop.is_set():
            try:
                c, _ = lst.accept()
            except OSError:
                continue
            c.setblocking(False)
            accepted.append(c)
            for s in list(accepted):
                try:
                    while s.recv(65536):
                        pass
                except OSError:
                    pass
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield rig
    stop.set()
    t.join(5)
    for c in accepted:
        c.close()
    lst.close()
    rig.close()
    shutil.rmtree(d, ignore_errors=True)


packets = st.lists(st.fixed_dictionaries({
    "op": st.integers(0, 9),
    "src_port": st.sampled_from([5000, 5001, 5002]),
    "dst_port": st.sampled_from([1234, 4321, 1 << 30]),
    "payload": st.binary(max_size=300),
    "flags": st.integers(0, 7),
    "buf_alloc": st.sampled_from([0, 1, 4096, 1 << 18, 0xFFFF_FFFF]),
    "fwd_cnt": st.sampled_from([0, 100, 0xFFFF_FFF0]),
    "src_cid": st.sampled_from([None, None, None, 99]),
    "dst_cid": st.sampled_from([2, 2, 2, 5]),
    "type": st.sampled_from([1, 1, 1, 2]),
    "length": st.sampled_from([None, None, None, 0, 5000, MAX_PKT_PAYLOAD + 1]),
}), max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=packets)
def test_arbitrary_packets_never_break_the_device(world, seq):
    g = world.guest
    g.call(lambda: [g.send_packet(**p) for p in seq])
    g.call(lambda: None)  # let the loop drain what that caused
    time.sleep(0.01)
    assert not world.errors and world.transport.failure is None
    assert len(world.device.muxer.ctrlq) <= 256
    # and it still serves a well-behaved stream
    s = g.connect(1234)
    s.send(b"ok")
    s.shutdown()
    s.wait_state("closed")
