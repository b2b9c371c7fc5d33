"""A hostile tiny guest against every built-in virtio device at once (blk, net on a TAP in
a namespace the test creates, vsock, rng): each device fails into NEEDS_RESET, the VM
runs on to the guest's own reset, and every device works again after a driver reset."""

import os
import re
import socket
import threading

import pytest

from nodesvc.vmm.config import DeviceSpec
from nodesvc.vmm.exits import ExitReason

pytestmark = pytest.mark.kvm
SEEDS = (1, 2, 3, 7, 42, 1234)
SECTOR0 = bytes.fromhex("c0ffee11") + bytes(508)


@pytest.fixture
def devices(tmp_path):
    from nodesvc.net.netns import NetNamespace
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root and /dev/net/tun for the TAP in a network namespace")
    ns = NetNamespace("hostile")
    try:
        ns.create_tap("tap0")
        disk = tmp_path / "disk.img"
        disk.write_bytes(SECTOR0 + bytes(1 << 20))
        uds = str(tmp_path / "v.sock")
        yield uds, [
            DeviceSpec("virtio-blk", {"drive_id": "rootfs", "path_on_host": str(disk),
                                      "is_root_device": False}),
            DeviceSpec("virtio-net", {"iface_id": "eth0", "host_dev_name": "tap0",
                                      "guest_mac": "06:00:c0:00:02:02", "netns": ns.name}),
            DeviceSpec("vsock", {"guest_cid": 3, "uds_path": uds}),
            DeviceSpec("virtio-rng", {}),
        ]
    finally:
        ns.close()


def _host_pokes(uds: str, stop: threading.Event) -> None:
    """Host-side activity while the guest attacks: connections to the vsock device's
    socket wake its event-loop paths (not only the queue-kick path). Bounded."""
    for _ in range(200):
        if stop.wait(0.005):
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.2)
                s.connect(uds)
                s.sendall(b"CONNECT 1234\n")
        except OSError:
            pass


@pytest.mark.parametrize("seed", SEEDS)
def test_hostile_guest_fails_devices_never_the_vm(run_tiny, devices, seed, capfd, caplog):
    uds, specs = devices
    stop = threading.Event()

    def start_pokes(vm, sink):
        threading.Thread(target=_host_pokes, args=(uds, stop), daemon=True).start()

    try:
        r = run_tiny("hostile", boot_args=f"seed={seed} rounds=40", devices=specs,
                     before_run=start_pokes, timeout=60)
    finally:
        stop.set()
    out = r.lines
    assert "HOSTILE DONE" in out, (r.result, out[-10:])
    assert r.result.reason is ExitReason.GUEST_RESET, r.result
    assert not [ln for ln in out if ln.startswith("FAIL")], out
    # the guest saw NEEDS_RESET on every device, and the VMM counted each failure
    slots = [re.match(r"SLOT \d+ id=(\d+) needs_reset=(\d+)", ln) for ln in out]
    seen = {int(m[1]): int(m[2]) for m in slots if m}
    assert set(seen) == {1, 2, 4, 19} and min(seen.values()) >= 1, seen
    errors = r.vm.stats()["device_errors"]
    for dev in ("virtio-blk:rootfs", "virtio-net:eth0", "vsock:vsock", "virtio-rng:entropy"):
        assert errors.get(dev, 0) >= 1, errors
    # ... and every device works again after a driver reset
    assert "RECOVERED rng 32" in out and "RECOVERED blk 0x11eeffc0" in out
    assert "RECOVERED net tx" in out and "RECOVERED vsock tx" in out
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Traceback" not in caplog.text
