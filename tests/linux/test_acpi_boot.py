"""Guests Firecracker users bring: an ACPI-only kernel and a bzImage (two boots).

ACPI-only (guest/out/vmlinux-acpi, like Firecracker's own guest config): no MP-table
parsing and no `virtio_mmio.device=` support, so every vCPU and device it finds come from
our RSDP/MADT/DSDT. One boot with 2 vCPUs, an ext4 root on virtio-blk, a virtio-net TAP in
a network namespace, vsock and virtio-rng: the kernel mounts the root, configures the NIC
(`ip=`) and answers the host's ping, and every virtio driver reaches DRIVER_OK; with no
init on the image it then panics and resets. bzImage (guest/out/bzImage, the default kernel with an uncompressed payload):
the loader's setup_header path boots it to `Run /init`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nodesvc.net.netns import NetNamespace, delete_link
from nodesvc.vmm import cmdline as cmdline_mod
from nodesvc.vmm.config import config_from_flags, parse_config
from nodesvc.testing.jailed import JailedVm
from nodesvc.vmm.exits import ExitReason
from nodesvc.vmm.virtio import constants as V

from tests.linux.agent_host import icmp_ping

pytestmark = [pytest.mark.kvm, pytest.mark.linux]

GUEST = Path(__file__).resolve().parents[2] / "guest"
#: ~35-45 s each on the nested-KVM hosts; a bounded wait, not an assertion.
BOOT_BUDGET = 300
HOST_IP, GUEST_IP, PREFIX = "192.0.2.1", "192.0.2.2", 24
GUEST_MAC = "06:00:c0:00:02:03"
TAP = "acpitap0"
VCPUS = 2
ROOT_MARKER = b"VFS: Mounted root (ext4 filesystem)"
#: printk time stamp and message of one console line
LINE = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$", re.M)


@dataclass
class Boot:
    text: str
    exit: object
    elapsed: float
    transports: list = field(default_factory=list)   # VirtioMmioTransport, in slot order
    ping_rtt: float | None = None
    errors: list = field(default_factory=list)

    def guest_time(self, message: str) -> float:
        for t, msg in LINE.findall(self.text):
            if message in msg:
                return float(t)
        raise AssertionError(f"{message!r} not on the console; tail:\n{self.text[-3000:]}")


@pytest.fixture(scope="module")
def kernels():
    """guest/out/{bzImage,vmlinux-acpi,initramfs.cpio}: relinked from the cache in well
    under a second, built (~4 min each on 2 cores) only when the recipe changed."""
    subprocess.run(["bash", str(GUEST / "build.sh"), "default", "acpi"], check=True)
    out = GUEST / "out"
    return {"bzimage": out / "bzImage", "acpi": out / "vmlinux-acpi",
            "initramfs": out / "initramfs.cpio"}


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "not root (network namespaces and TAP creation need it)"
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return "/dev/net/tun is not usable"
    return None


def _pinger(sink, ns, boot: Boot, stop: threading.Event) -> None:
    """Ping the guest once its NIC is configured (before it mounts the root and resets)."""
    try:
        while not stop.is_set():
            if sink.wait_for(b"IP-Config: Complete", 0.5):
                boot.ping_rtt = icmp_ping(ns.socket, GUEST_IP, tries=10, wait=1.0)
                return
    except Exception as e:  # reported by the tests, never lost in a thread
        boot.errors.append(repr(e))


@pytest.fixture(scope="module")
def acpi_boot(kernels, tmp_path_factory, jail_base):
    missing = _missing()
    if missing:
        pytest.skip(missing)
    if not shutil.which("mkfs.ext4"):   # a set-up step, never installed by a test
        pytest.fail("mkfs.ext4 (e2fsprogs) is missing: run `make sysdeps` "
                    "(scripts/install-sysdeps, as root)")
    d = tmp_path_factory.mktemp("acpi")
    root = d / "root.ext4"
    (d / "src" / "dev").mkdir(parents=True)        # for DEVTMPFS_MOUNT
    (d / "src" / "hello").write_text("nodesvc acpi root\n")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "acpiroot", "-d", str(d / "src"), str(root),
                    "4M"], check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # panic=5: a few seconds between "no init" and the reset, for the host's ping.
    # Without i8042.nopnp the i8042 driver takes its ports and IRQ from the DSDT's PS2_:
    # a hardware-reduced ACPI guest has no legacy PIC, so ISA IRQ 1 is not mapped for
    # the legacy probe (which fails with -EINVAL).
    args = " ".join([cmdline_mod.DEFAULT_BOOT_ARGS.replace("panic=1", "panic=5")
                     .replace(" i8042.nopnp", ""),
                     f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off"])
    ns = NetNamespace("acpi")
    try:
        ns.create_tap(TAP)
        ns.add_address(TAP, HOST_IP, PREFIX)
        cfg = parse_config({
            "boot-source": {"kernel_image_path": str(kernels["acpi"]), "boot_args": args},
            "machine-config": {"vcpu_count": VCPUS, "mem_size_mib": 256},
            "drives": [{"drive_id": "rootfs", "path_on_host": str(root),
                        "is_root_device": True, "is_read_only": True}],
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": TAP,
                                    "guest_mac": GUEST_MAC, "netns": ns.name}],
            "vsock": {"guest_cid": 3, "uds_path": str(d / "v.sock")},
            "entropy": {},
        })
        vm = JailedVm(cfg, vm_id="acpi-boot", jail_base=jail_base)    # jailed, as the node runs it
        sink = vm.sink
        boot = Boot("", None, 0.0)
        stop = threading.Event()
        helper = threading.Thread(target=_pinger, args=(sink, ns, boot, stop), daemon=True)
        helper.start()
        t0 = time.monotonic()
        boot.exit = vm.run(timeout=BOOT_BUDGET)
        boot.elapsed = time.monotonic() - t0
        boot.transports = vm.transports
        stop.set()
        helper.join(30)
        boot.text = sink.text()
        (d / "console.log").write_text(boot.text)     # for post-mortems
        yield boot
    finally:
        try:
            delete_link(ns.name, TAP)
        finally:
            ns.close()


def test_acpi_kernel_can_only_discover_through_acpi(kernels):
    config = (kernels["acpi"].resolve().parent / "config").read_text().splitlines()
    assert "CONFIG_ACPI=y" in config
    assert "# CONFIG_X86_MPPARSE is not set" in config
    assert "# CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set" in config


def test_acpi_tables_found_where_linux_scans(acpi_boot):
    text = acpi_boot.text
    assert re.search(r"ACPI: RSDP 0x00000000000E0000 000024 \(v02 NODESV\)", text), text[-3000:]
    for sig in ("XSDT", "FACP", "DSDT", "APIC"):
        assert re.search(rf"ACPI: {sig} 0x[0-9A-F]+ [0-9A-F]+ \(v0\d NODESV NSVM", text), sig
    assert "A valid RSDP was not found" not in text
    # the kernel cannot read an MP table: whatever it knows of CPUs came from the MADT
    assert "MP-table" not in text and "ACPI MADT or MP tables are not detected" not in text


def test_every_vcpu_comes_online_from_the_madt(acpi_boot):
    text = acpi_boot.text
    assert "ACPI: Using ACPI (MADT) for SMP configuration information" in text
    assert re.search(r"IOAPIC\[0\]: apic_id %d, version \d+, address 0xfec00000, GSI 0-23"
                     % VCPUS, text)
    assert f"smp: Brought up 1 node, {VCPUS} CPUs" in text


def test_virtio_blk_from_the_dsdt_mounts_the_ext4_root(acpi_boot):
    text = acpi_boot.text
    assert re.search(r"virtio_blk virtio\d: \[vda\] 8192 512-byte logical blocks", text)
    assert ROOT_MARKER.decode() in text
    (blk,) = [t for t in acpi_boot.transports if t.device.device_id == V.ID_BLOCK]
    assert blk.status & V.S_DRIVER_OK


def test_virtio_net_from_the_dsdt_answers_ping(acpi_boot):
    text = acpi_boot.text
    assert "IP-Config: Complete:" in text, text[-3000:]
    assert f"device=eth0, hwaddr={GUEST_MAC}, ipaddr={GUEST_IP}" in text
    assert not acpi_boot.errors, acpi_boot.errors
    assert acpi_boot.ping_rtt is not None, "no ICMP echo reply from the guest"
    (net,) = [t for t in acpi_boot.transports if t.device.device_id == V.ID_NET]
    assert net.status & V.S_DRIVER_OK


def test_every_virtio_device_is_driven_from_the_dsdt(acpi_boot):
    """Each virtio-mmio window the DSDT lists was found and started by its Linux driver:
    DRIVER_OK is the guest's own status write, seen by the VMM."""
    ids = sorted(t.device.device_id for t in acpi_boot.transports)
    assert ids == sorted([V.ID_BLOCK, V.ID_NET, V.ID_VSOCK, V.ID_RNG])
    not_ok = [t.name for t in acpi_boot.transports if not t.status & V.S_DRIVER_OK]
    assert not not_ok, f"drivers never set DRIVER_OK on {not_ok}"


def test_legacy_devices_from_the_dsdt(acpi_boot):
    text = acpi_boot.text
    assert "pnp: PnP ACPI: found 2 devices" in text, text[-3000:]
    # PNP device names (00:0n): COM1 and PS2_ as the DSDT describes them. GSIs 4 and 1
    # get dynamic IRQ numbers: without a legacy PIC there are no ISA IRQ numbers.
    assert re.search(r"00:0\d: ttyS0 at I/O 0x3f8 \(irq = \d+, base_baud = \d+\) is a 16550A",
                     text)
    assert re.search(r"PNP: PS/2 Controller \[PNP0303:PS2_?\] at 0x60,0x64 irq \d+", text)
    assert re.search(r"serio: i8042 KBD port at 0x60,0x64 irq \d+", text)


def test_acpi_boot_ends_in_a_clean_reset(acpi_boot):
    # no init on the root: the kernel panics and panic=5 reboots through the i8042
    # (reboot=k); a run past BOOT_BUDGET is stopped, which is a different reason
    assert acpi_boot.exit.reason is ExitReason.GUEST_RESET, acpi_boot.exit
    print(f"\nACPI-only kernel: root mounted at guest "
          f"{acpi_boot.guest_time(ROOT_MARKER.decode()):.1f} s, run {acpi_boot.elapsed:.1f} s")


# -- bzImage -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bzimage_boot(kernels, jail_base):
    cfg = config_from_flags(kernel=str(kernels["bzimage"]), initrd=str(kernels["initramfs"]),
                            vcpus=1, mem_mib=256)
    vm = JailedVm(cfg, vm_id="bzimage-boot", jail_base=jail_base)
    t0 = time.monotonic()
    result = vm.run(timeout=BOOT_BUDGET)
    return vm, Boot(vm.sink.text(), result, time.monotonic() - t0)


def test_bzimage_boots_to_init(bzimage_boot):
    vm, boot = bzimage_boot
    assert vm.kernel.kind == "bzimage" and vm.kernel.setup_header is not None
    assert re.search(r"Linux version 6\.1\.\d+", boot.text), boot.text[-3000:]
    assert "Command line: " + vm.cmdline in boot.text
    assert "Run /init as init process" in boot.text, boot.text[-3000:]
    assert boot.exit.reason is ExitReason.GUEST_RESET, boot.exit
    print(f"\nbzImage: Run /init at guest {boot.guest_time('Run /init'):.1f} s, "
          f"run {boot.elapsed:.1f} s")
