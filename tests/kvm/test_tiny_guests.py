"""Each VMM path pinned by a purpose-built guest that runs in milliseconds."""

import os
import threading
import time

import pytest

from nodesvc.vmm.exits import ExitReason

pytestmark = pytest.mark.kvm


def _wait(cond, timeout: float) -> bool:
    """A bounded wait for a condition (an event without its own waitable)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def test_serial_output(run_tiny):
    r = run_tiny("hello")
    assert r.lines == ["HELLO FROM TINY GUEST"]
    assert r.result.reason is ExitReason.GUEST_RESET
    assert "i8042" in r.result.detail


def test_boot_protocol_cmdline_and_e820(run_tiny):
    r = run_tiny("bootinfo", mem_mib=64, boot_args="console=ttyS0 marker=42")
    assert r.result.reason is ExitReason.GUEST_RESET
    cmdline = next(line for line in r.lines if line.startswith("CMDLINE "))
    # the guest read exactly what the VMM composed, through cmd_line_ptr
    assert cmdline == "CMDLINE " + r.vm.cmdline
    assert "marker=42" in cmdline
    e820 = [line.split()[1:] for line in r.lines if line.startswith("E820 0x")]
    assert e820 == [["0x0", "0x9fc00", "1"], ["0x9fc00", "0x60400", "2"],
                    ["0x100000", hex((64 << 20) - 0x100000), "1"]]
    assert "DONE" in r.lines


@pytest.mark.parametrize("vcpus", [2, 4, 32])
def test_smp_every_vcpu_reports_its_apic_id(run_tiny, vcpus):
    r = run_tiny("smp", vcpus=vcpus)
    assert r.result.reason is ExitReason.GUEST_RESET, r.result
    online = sorted(int(line.split()[1]) for line in r.lines if line.endswith(" ONLINE"))
    assert online == list(range(vcpus))
    assert f"CPUS {vcpus}" in r.lines


def test_emulation_failure_reports_instruction_bytes(run_tiny):
    r = run_tiny("badinsn")
    assert r.lines[0] == "ABOUT TO FAIL"
    assert r.result.reason is ExitReason.EMULATION_FAILURE
    assert r.result.reason.exit_code != 0
    # the guest's unsupported instruction (popcnt: f3 [rex] 0f b8) is named in the message
    assert "bytes [f3 48 0f b8" in r.result.detail, r.result.detail


def test_triple_fault_is_a_distinct_exit(run_tiny):
    r = run_tiny("triple")
    assert r.lines == ["TRIPLE"]
    assert r.result.reason is ExitReason.TRIPLE_FAULT


def test_console_input_reaches_the_guest(run_tiny):
    rfd, wfd = os.pipe()

    def type_when_ready(vm, sink):
        def typer():
            if sink.wait_for(b"READY", 10):
                os.write(wfd, b"hi")
                os.write(wfd, b"q")
        threading.Thread(target=typer, daemon=True).start()

    try:
        r = run_tiny("echo", console_in_fd=rfd, before_run=type_when_ready)
    finally:
        os.close(rfd), os.close(wfd)
    assert r.result.reason is ExitReason.GUEST_RESET, r.result
    text = r.sink.text()
    assert "hi" in text and text.rstrip().endswith("BYE")


def test_stop_request_ends_a_running_guest(run_tiny):
    # echo waits for input forever; stop() from another thread must end it promptly.
    def stop_soon(vm, sink):
        def stopper():
            sink.wait_for(b"READY", 10)
            vm.stop("test stop")
        threading.Thread(target=stopper, daemon=True).start()

    r = run_tiny("echo", before_run=stop_soon)
    assert r.result.reason is ExitReason.STOPPED
    assert r.result.detail == "test stop"


def test_pio_exits_are_counted(run_tiny):
    r = run_tiny("ioloop", boot_args="count=500")
    assert r.result.reason is ExitReason.GUEST_RESET
    stats = r.vm.stats()
    assert stats["exits"]["io"] >= 500
    assert stats["unhandled_pio"] >= 500


def test_pause_and_resume_keep_the_guest(tiny_guest, jail_base):
    from nodesvc.testing.jailed import JailedVm
    from nodesvc.vmm.config import config_from_flags

    rfd, wfd = os.pipe()
    vm = JailedVm(config_from_flags(kernel=str(tiny_guest("echo")), vcpus=1, mem_mib=32),
                  jail_base=jail_base, console_in_fd=rfd)
    sink = vm.sink
    try:
        vm.start()
        assert sink.wait_for(b"READY", 10)
        vm.pause()
        before = vm.stats()["exits"]
        os.write(wfd, b"p")
        # paused: the byte lands in the UART and waits; the polling guest makes no exit
        assert _wait(lambda: vm.devices.get("serial", "serial").rx_bytes >= 1, 5), \
            "console byte never reached the UART"
        assert vm.stats()["exits"] == before and "READY\np" not in sink.text()
        vm.resume()
        assert sink.wait_for(b"READY\np", 5)
        os.write(wfd, b"q")
        result = vm.wait(5)
        assert result is not None and result.reason is ExitReason.GUEST_RESET
    finally:
        vm.shutdown()
        os.close(rfd), os.close(wfd)


def test_idle_guest_sleeps_in_kvm_without_exits(run_tiny):
    import time

    def stop_later(vm, sink):
        def stopper():
            sink.wait_for(b"IDLE", 10)
            time.sleep(0.5)
            vm.stop("done idling")
        threading.Thread(target=stopper, daemon=True).start()

    r = run_tiny("idle", before_run=stop_later)
    assert r.lines == ["IDLE"]
    assert r.result.reason is ExitReason.STOPPED
    # a halted vCPU blocks in the kernel: only the console's port writes exit to us
    assert r.vm.stats()["exits"]["io"] < 20


def test_boot_timer_records_guest_boot_time(run_tiny):
    from nodesvc.vmm.config import DeviceSpec

    r = run_tiny("hello", boot_args="boottimer=1", devices=[DeviceSpec("boot-timer", {})])
    assert r.result.reason is ExitReason.GUEST_RESET
    timer = r.vm.devices.get("boot-timer", "boot-timer")
    assert timer.boot_time is not None and 0 < timer.boot_time < r.vm.ended_at - r.vm.created_at
