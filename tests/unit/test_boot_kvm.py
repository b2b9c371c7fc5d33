"""The boot layout accepted by real KVM: a gcc-built long-mode guest, entered with
our GDT, page tables and zero page, reads them back and reports over port I/O."""

import os
import shutil
import struct
import subprocess

import pytest

from nodesvc.vmm.boot import (BOOT_GDT, decode_descriptor, layout as L, load_kernel,
                              write_boot_params, write_gdt_idt, write_mptable, write_page_tables)
from nodesvc.vmm.boot.gdt import GDT_LIMIT, IDT_LIMIT
from nodesvc.vmm.memory import GuestMemory

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc"),
]

GUEST_C = r"""
void _start(void) {
    unsigned long zp;
    asm volatile("mov %%rsi, %0" : "=r"(zp));
    unsigned int cmdptr = *(volatile unsigned int *)(zp + 0x228);
    asm volatile("outw %0, $0x80" :: "a"(*(volatile unsigned short *)(zp + 0x1fe)));
    asm volatile("outl %0, $0x84" :: "a"(*(volatile unsigned int *)0x9fc00UL));
    asm volatile("outb %0, $0x88" :: "a"(*(volatile unsigned char *)(unsigned long)cmdptr));
    asm volatile("outl %0, $0x8c" :: "a"(*(volatile unsigned int *)0x3ff00000UL));
    for (;;) asm volatile("hlt");
}
"""


def test_long_mode_entry_with_boot_layout(tmp_path):
    from nodesvc.vmm.kvm import constants as C
    from nodesvc.vmm.kvm.system import Kvm

    src, elf = tmp_path / "g.c", tmp_path / "g.elf"
    src.write_text(GUEST_C)
    subprocess.run(["gcc", "-O1", "-nostdlib", "-static", "-no-pie", "-fno-pic", "-ffreestanding",
                    "-mno-red-zone", "-fno-asynchronous-unwind-tables", "-Wl,--build-id=none",
                    "-Wl,-Ttext-segment=0x200000", "-o", str(elf), str(src)],
                   check=True, capture_output=True)
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.set_tss_addr(0xFFFBD000)
    mem = GuestMemory(1 << 30)                       # RAM up to the end of the identity map
    vcpu = None
    try:
        mem.register(vm)
        mem.write(0x3FF00000, struct.pack("<I", 0xC0FFEE11))   # inside the last 2 MiB page
        k = load_kernel(mem, elf)
        write_boot_params(mem, cmdline=b"Zconsole=ttyS0", rng_seed=os.urandom(32))
        write_mptable(mem, 1)
        write_gdt_idt(mem)
        cr3 = write_page_tables(mem)

        vcpu = vm.create_vcpu(0)
        s = vcpu.get_sregs()
        segs = (("cs", 1), ("ds", 2), ("es", 2), ("fs", 2), ("gs", 2), ("ss", 2), ("tr", 3))
        for name, idx in segs:
            for f, val in decode_descriptor(BOOT_GDT[idx]).kvm_segment_fields(idx).items():
                setattr(getattr(s, name), f, val)
        s.gdt.base, s.gdt.limit = L.GDT, GDT_LIMIT
        s.idt.base, s.idt.limit = L.IDT, IDT_LIMIT
        s.cr0 |= C.X86_CR0_PE | C.X86_CR0_PG | C.X86_CR0_ET
        s.cr3, s.cr4 = cr3, s.cr4 | C.X86_CR4_PAE
        s.efer |= C.EFER_LME | C.EFER_LMA
        vcpu.set_sregs(s)
        r = vcpu.get_regs()
        r.rip, r.rsi, r.rflags = k.entry, L.ZERO_PAGE, 2
        r.rsp = r.rbp = L.BOOT_STACK
        vcpu.set_regs(r)

        out = {}
        for _ in range(10):
            reason = vcpu.run()
            if reason == C.KVM_EXIT_HLT:
                break
            assert reason == C.KVM_EXIT_IO, f"unexpected exit {reason}"
            io = vcpu.run_struct.io
            data = vcpu.run_buffer[io.data_offset:io.data_offset + io.size]
            out[io.port] = int.from_bytes(data, "little")
        assert out == {0x80: 0xAA55, 0x84: int.from_bytes(b"_MP_", "little"),
                       0x88: ord("Z"), 0x8C: 0xC0FFEE11}
    finally:
        if vcpu is not None:
            vcpu.close()
        mem.close()
        vm.close()
        kvm.close()
