"""Guest physical addresses of the x86_64 direct-boot layout (Firecracker-compatible).

Everything the VMM writes for the kernel lives below 1 MiB; the kernel goes at or
above 1 MiB; the 32-bit MMIO gap [3 GiB, 4 GiB) holds device windows, the IOAPIC
and the local APIC, and RAM beyond 3 GiB continues at 4 GiB.
"""

PAGE_SIZE = 0x1000

# -- below 1 MiB: boot structures ---------------------------------------------
GDT = 0x500                  # boot GDT (4 descriptors)
IDT = 0x520                  # empty IDT (a single zero entry)
ZERO_PAGE = 0x7000           # struct boot_params; RSI points here at entry
BOOT_STACK = 0x8FF0          # RSP/RBP at entry (grows down, below the page tables)
PML4 = 0x9000                # identity page tables for the first 1 GiB
PDPTE = 0xA000
PDE = 0xB000
IDENTITY_MAP_SIZE = 1 << 30  # 512 x 2 MiB pages
CMDLINE = 0x20000            # kernel command line (NUL-terminated)
CMDLINE_MAX = 2048           # bytes including the NUL
SETUP_DATA = 0x21000         # setup_data chain (RNG seed): the page after the cmdline area
SETUP_DATA_MAX = PAGE_SIZE   # the chain must fit in that page
EBDA_START = 0x9FC00         # last KiB of the 640 KiB base memory ...
MPTABLE_START = EBDA_START   # ... where Linux scans for the MP floating pointer
HIMEM_START = 0x100000       # 1 MiB: [EBDA_START, HIMEM_START) is reserved in e820

# -- kernel placement ----------------------------------------------------------
BZIMAGE_LOAD = 0x1000000     # 16 MiB: the protected-mode part of a bzImage
BZIMAGE_ENTRY_64 = 0x200     # 64-bit entry offset from the load address (XLF_KERNEL_64)
KERNEL_ALIGNMENT = 0x1000000
INITRD_ADDR_MAX_DEFAULT = 0x7FFFFFFF   # what x86_64 kernels put in initrd_addr_max

# -- 32-bit MMIO gap and interrupt controllers ---------------------------------
MMIO_GAP_START = 0xC0000000
MMIO_GAP_END = 1 << 32
IOAPIC = 0xFEC00000
LAPIC = 0xFEE00000

# -- e820 types (arch/x86/include/asm/e820/types.h) ------------------------------
E820_RAM = 1
E820_RESERVED = 2

# -- limits --------------------------------------------------------------------
MAX_VCPUS = 32               # our VMM's limit (Firecracker's MP table allows 254)
IRQ_MAX = 23                 # IOAPIC pins 0..23, GSI n -> pin n (KVM default routing)
