"""x86_64 direct boot: guest-memory layout for the Linux 64-bit boot protocol.

Pure layout code — it writes into a GuestMemory and never touches KVM. Order of use:
load_kernel -> load_initrd -> write_boot_params -> write_mptable -> write_gdt_idt
-> write_page_tables; then the vCPU code sets RIP = KernelImage.entry, RSI = ZERO_PAGE,
RSP = RBP = BOOT_STACK, segments from gdt.decode_descriptor(BOOT_GDT[i]).
"""

from . import layout
from .errors import BootError, InitrdLoadError, KernelLoadError
from .gdt import BOOT_GDT, decode_descriptor, write_gdt_idt, write_page_tables
from .initrd import load_initrd
from .kernel import KernelImage, detect_kernel_format, load_kernel
from .mptable import write_mptable
from .zeropage import e820_map, read_boot_params, write_boot_params

__all__ = [
    "layout", "BootError", "InitrdLoadError", "KernelLoadError", "BOOT_GDT",
    "decode_descriptor", "write_gdt_idt", "write_page_tables", "load_initrd",
    "KernelImage", "detect_kernel_format", "load_kernel", "write_mptable",
    "e820_map", "read_boot_params", "write_boot_params",
]
