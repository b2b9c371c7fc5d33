"""The cffi declarations and ioctl table must match the host's <linux/kvm.h> exactly."""

import shutil
import subprocess

import pytest

from nodesvc.vmm.kvm import ioctls
from nodesvc.vmm.kvm.abi import ffi

HEADER = "/usr/include/linux/kvm.h"

STRUCT_FIELDS = {
    "kvm_regs": ["rip", "rflags", "r15"],
    "kvm_segment": ["selector", "type", "unusable"],
    "kvm_dtable": ["limit"],
    "kvm_sregs": ["cs", "tr", "ldt", "gdt", "idt", "cr0", "cr8", "efer", "apic_base", "interrupt_bitmap"],
    "kvm_fpu": ["fcw", "ftwx", "last_ip", "xmm", "mxcsr"],
    "kvm_msr_entry": ["data"],
    "kvm_msrs": ["entries"],
    "kvm_cpuid_entry2": ["index", "flags", "edx", "padding"],
    "kvm_cpuid2": ["entries"],
    "kvm_lapic_state": ["regs"],
    "kvm_mp_state": ["mp_state"],
    "kvm_userspace_memory_region": ["guest_phys_addr", "memory_size", "userspace_addr"],
    "kvm_pit_config": ["pad"],
    "kvm_irq_level": ["level"],
    "kvm_irqfd": ["gsi", "flags", "resamplefd", "pad"],
    "kvm_ioeventfd": ["addr", "len", "fd", "flags", "pad"],
    "kvm_translation": ["physical_address", "valid", "usermode"],
    "kvm_run": ["immediate_exit", "exit_reason", "if_flag", "cr8", "apic_base", "io"],
}

# Union members of kvm_run, checked through their first field.
RUN_UNION = {
    "io.data_offset": "io.data_offset", "io.port": "io.port", "io.count": "io.count",
    "mmio.phys_addr": "mmio.phys_addr", "mmio.data": "mmio.data", "mmio.len": "mmio.len",
    "mmio.is_write": "mmio.is_write", "internal.suberror": "internal.suberror",
    "internal.data": "internal.data", "system_event.type": "system_event.type",
    "system_event.ndata": "system_event.ndata",
    "emulation_failure.flags": "emulation_failure.flags",
    "emulation_failure.insn_size": "emulation_failure.insn_size",
    "emulation_failure.insn_bytes": "emulation_failure.insn_bytes",
    "fail_entry.hardware_entry_failure_reason": "fail_entry.hardware_entry_failure_reason",
}


def _ffi_offset(struct: str, path: str) -> int:
    off, ctype = 0, ffi.typeof(f"struct {struct}")
    for name in path.split("."):
        fields = dict(ctype.fields)
        if name not in fields:  # anonymous union in kvm_run: look one level down
            for _, f in ctype.fields:
                if f.type.kind in ("struct", "union") and name in dict(f.type.fields):
                    off += f.offset
                    fields = dict(f.type.fields)
                    break
        off += fields[name].offset
        ctype = fields[name].type
    return off


@pytest.fixture(scope="module")
def header_values(tmp_path_factory):
    if not shutil.which("gcc"):
        pytest.skip("gcc not installed on this host: cannot compile the header check")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void){"]
    for s, fields in STRUCT_FIELDS.items():
        lines.append(f'printf("size {s} %zu\\n", sizeof(struct {s}));')
        for f in fields:
            lines.append(f'printf("off {s}.{f} %zu\\n", offsetof(struct {s}, {f}));')
    for path in RUN_UNION:
        lines.append(f'printf("off kvm_run.{path} %zu\\n", offsetof(struct kvm_run, {path}));')
    for name in ioctls.TABLE:
        lines.append(f'printf("ioctl {name} %lu\\n", (unsigned long){name});')
    lines.append("return 0;}")
    d = tmp_path_factory.mktemp("abi")
    (d / "abi.c").write_text("\n".join(lines))
    subprocess.run(["gcc", "-o", str(d / "abi"), str(d / "abi.c")], check=True)
    out = subprocess.run([str(d / "abi")], check=True, capture_output=True, text=True).stdout
    return {" ".join(line.split()[:2]): int(line.split()[2]) for line in out.splitlines()}


def test_struct_sizes_match_header(header_values):
    for s in STRUCT_FIELDS:
        if s == "kvm_run":
            continue  # our kvm_run stops before the sync-regs tail; its prefix is checked below
        assert ffi.sizeof(f"struct {s}") == header_values[f"size {s}"], s


def test_field_offsets_match_header(header_values):
    for s, fields in STRUCT_FIELDS.items():
        for f in fields:
            assert _ffi_offset(s, f) == header_values[f"off {s}.{f}"], f"{s}.{f}"
    for path in RUN_UNION:
        assert _ffi_offset("kvm_run", path) == header_values[f"off kvm_run.{path}"], path


def test_ioctl_numbers_match_header(header_values):
    for name, number in ioctls.TABLE.items():
        assert number == header_values[f"ioctl {name}"], name
