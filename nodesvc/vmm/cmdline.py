"""The guest kernel command line: defaults, device additions and host workarounds."""

from __future__ import annotations

import functools
import os

#: Used when the config gives no boot_args (Firecracker's default, plus the serial console).
DEFAULT_BOOT_ARGS = ("console=ttyS0 reboot=k panic=1 pci=off nomodule "
                     "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd swiotlb=noforce")

#: Nested-PVM hosts emulate guest kernel code and cannot emulate these features
#: (see docs/kvm-hosts.md); the guest must not use them.
# Linux 6.1 reads at most 127 characters of clearcpuid= (and only the first one), so the
# list holds what the guest kernel could execute and noxsave does not already turn off
# (AVX and everything built on it need XSAVE; movbe/clwb/rdpid are never used by its code;
# cx16: SLUB's cmpxchg16b, docs/kvm-hosts.md).
_CLEAR_CPUID = ("smap,smep,umip,pku,popcnt,rdrand,rdseed,fsgsbase,cx16,invpcid,pcid,"
                "bmi1,bmi2,erms,fsrm,clflushopt,sha_ni,aes,pclmulqdq,adx")
CLEARCPUID_MAX = 127
PVM_WORKAROUNDS = f"noxsave nopti clearcpuid={_CLEAR_CPUID}"

PVM_MARKER = "/sys/module/kvm_pvm"


@functools.cache
def host_is_nested_pvm() -> bool:
    """Asked once per process, before any jail: a jailed VMM sees no /sys (the zygote
    asks while warming up, and its forks inherit the answer)."""
    return os.path.exists(PVM_MARKER)


def compose(boot_args: str | None, device_args: list[str], *, pvm: bool | None = None) -> str:
    parts = [boot_args if boot_args is not None else DEFAULT_BOOT_ARGS]
    parts += device_args
    if pvm is None:
        pvm = host_is_nested_pvm()
    if pvm and "clearcpuid=" not in parts[0]:
        parts.append(PVM_WORKAROUNDS)
    return " ".join(p for p in parts if p)
