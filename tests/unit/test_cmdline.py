from nodesvc.vmm import cmdline


def test_default_args_and_device_args():
    s = cmdline.compose(None, ["virtio_mmio.device=4K@0xd0000000:5"], pvm=False)
    assert s.startswith("console=ttyS0 reboot=k panic=1")
    assert s.endswith("virtio_mmio.device=4K@0xd0000000:5")
    assert "clearcpuid" not in s


def test_pvm_hosts_get_workarounds_once():
    s = cmdline.compose("console=ttyS0", [], pvm=True)
    assert "noxsave" in s and "clearcpuid=smap" in s
    again = cmdline.compose(s, [], pvm=True)
    assert again.count("clearcpuid=") == 1


def test_user_args_kept_verbatim():
    assert cmdline.compose("root=/dev/vda ro", [], pvm=False) == "root=/dev/vda ro"


def test_clearcpuid_fits_what_linux_reads():
    value = cmdline.PVM_WORKAROUNDS.split("clearcpuid=")[1].split()[0]
    assert len(value) <= cmdline.CLEARCPUID_MAX
    assert "popcnt" in value and "smap" in value
