"""The subset of <linux/kvm.h> (x86_64) and libc that the VMM uses, declared once for cffi.

ABI mode: no compiler at install time. Struct layouts follow the kernel's UAPI
header exactly; tests/unit/test_kvm_abi.py walks these declarations and checks every
struct's size and every field's offset and size against the real header with gcc.
Ioctl numbers are computed from these declarations in `ioctls.py`, never by hand.
"""

from __future__ import annotations

from ..cffi_cache import load


def _declare(ffi) -> None:
    ffi.cdef("""
/* libc */
int ioctl(int fd, unsigned long request, ...);
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
int munmap(void *addr, size_t length);
int madvise(void *addr, size_t length, int advice);
int mincore(void *addr, size_t length, unsigned char *vec);

struct kvm_regs {
    uint64_t rax, rbx, rcx, rdx;
    uint64_t rsi, rdi, rsp, rbp;
    uint64_t r8,  r9,  r10, r11;
    uint64_t r12, r13, r14, r15;
    uint64_t rip, rflags;
};

struct kvm_segment {
    uint64_t base;
    uint32_t limit;
    uint16_t selector;
    uint8_t  type;
    uint8_t  present, dpl, db, s, l, g, avl;
    uint8_t  unusable;
    uint8_t  padding;
};

struct kvm_dtable {
    uint64_t base;
    uint16_t limit;
    uint16_t padding[3];
};

struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    uint64_t cr0, cr2, cr3, cr4, cr8;
    uint64_t efer;
    uint64_t apic_base;
    uint64_t interrupt_bitmap[4];
};

struct kvm_fpu {
    uint8_t  fpr[8][16];
    uint16_t fcw;
    uint16_t fsw;
    uint8_t  ftwx;
    uint8_t  pad1;
    uint16_t last_opcode;
    uint64_t last_ip;
    uint64_t last_dp;
    uint8_t  xmm[16][16];
    uint32_t mxcsr;
    uint32_t pad2;
};

struct kvm_msr_entry {
    uint32_t index;
    uint32_t reserved;
    uint64_t data;
};

struct kvm_msrs {
    uint32_t nmsrs;
    uint32_t pad;
    struct kvm_msr_entry entries[];
};

struct kvm_cpuid_entry2 {
    uint32_t function;
    uint32_t index;
    uint32_t flags;
    uint32_t eax, ebx, ecx, edx;
    uint32_t padding[3];
};

struct kvm_cpuid2 {
    uint32_t nent;
    uint32_t padding;
    struct kvm_cpuid_entry2 entries[];
};

struct kvm_lapic_state {
    char regs[1024];
};

struct kvm_mp_state {
    uint32_t mp_state;
};

struct kvm_userspace_memory_region {
    uint32_t slot;
    uint32_t flags;
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
};

struct kvm_pit_config {
    uint32_t flags;
    uint32_t pad[15];
};

struct kvm_irq_level {
    uint32_t irq;   /* union with int32_t status in the header */
    uint32_t level;
};

struct kvm_irqfd {
    uint32_t fd;
    uint32_t gsi;
    uint32_t flags;
    uint32_t resamplefd;
    uint8_t  pad[16];
};

struct kvm_ioeventfd {
    uint64_t datamatch;
    uint64_t addr;
    uint32_t len;
    int32_t  fd;
    uint32_t flags;
    uint8_t  pad[36];
};

struct kvm_translation {
    uint64_t linear_address;
    uint64_t physical_address;
    uint8_t  valid;
    uint8_t  writeable;
    uint8_t  usermode;
    uint8_t  pad[5];
};

/* vCPU and VM state for snapshots (KVM_GET_* / KVM_SET_*) */
struct kvm_msr_list {
    uint32_t nmsrs;
    uint32_t indices[];
};

struct kvm_xsave {
    uint32_t region[1024];
    uint32_t extra[];
};

struct kvm_xcr {
    uint32_t xcr;
    uint32_t reserved;
    uint64_t value;
};

struct kvm_xcrs {
    uint32_t nr_xcrs;
    uint32_t flags;
    struct kvm_xcr xcrs[16];
    uint64_t padding[16];
};

struct kvm_debugregs {
    uint64_t db[4];
    uint64_t dr6;
    uint64_t dr7;
    uint64_t flags;
    uint64_t reserved[9];
};

struct kvm_vcpu_events {
    struct { uint8_t injected, nr, has_error_code, pending; uint32_t error_code; } exception;
    struct { uint8_t injected, nr, soft, shadow; } interrupt;
    struct { uint8_t injected, pending, masked, pad; } nmi;
    uint32_t sipi_vector;
    uint32_t flags;
    struct { uint8_t smm, pending, smm_inside_nmi, latched_init; } smi;
    struct { uint8_t pending; } triple_fault;
    uint8_t  reserved[26];
    uint8_t  exception_has_payload;
    uint64_t exception_payload;
};

struct kvm_clock_data {
    uint64_t clock;
    uint32_t flags;
    uint32_t pad0;
    uint64_t realtime;
    uint64_t host_tsc;
    uint32_t pad[4];
};

struct kvm_irqchip {
    uint32_t chip_id;
    uint32_t pad;
    union { char dummy[512]; } chip;   /* PIC or IOAPIC state, kept as bytes */
};

struct kvm_pit_channel_state {
    uint32_t count;
    uint16_t latched_count;
    uint8_t  count_latched, status_latched, status, read_state, write_state, write_latch;
    uint8_t  rw_mode, mode, bcd, gate;
    int64_t  count_load_time;
};

struct kvm_pit_state2 {
    struct kvm_pit_channel_state channels[3];
    uint32_t flags;
    uint32_t reserved[9];
};

struct kvm_run_io {
    uint8_t  direction;
    uint8_t  size;
    uint16_t port;
    uint32_t count;
    uint64_t data_offset;
};

struct kvm_run_mmio {
    uint64_t phys_addr;
    uint8_t  data[8];
    uint32_t len;
    uint8_t  is_write;
};

struct kvm_run_internal {
    uint32_t suberror;
    uint32_t ndata;
    uint64_t data[16];
};

/* KVM_INTERNAL_ERROR_EMULATION with KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES */
struct kvm_run_emulation_failure {
    uint32_t suberror;
    uint32_t ndata;
    uint64_t flags;
    uint8_t  insn_size;
    uint8_t  insn_bytes[15];
};

struct kvm_run_system_event {
    uint32_t type;
    uint32_t ndata;
    uint64_t data[16];
};

struct kvm_run_fail_entry {
    uint64_t hardware_entry_failure_reason;
    uint32_t cpu;
};

struct kvm_run {
    uint8_t  request_interrupt_window;
    uint8_t  immediate_exit;
    uint8_t  padding1[6];
    uint32_t exit_reason;
    uint8_t  ready_for_interrupt_injection;
    uint8_t  if_flag;
    uint16_t flags;
    uint64_t cr8;
    uint64_t apic_base;
    union {
        struct { uint64_t hardware_exit_reason; } hw;
        struct kvm_run_fail_entry fail_entry;
        struct kvm_run_io io;
        struct kvm_run_mmio mmio;
        struct kvm_run_internal internal;
        struct kvm_run_emulation_failure emulation_failure;
        struct kvm_run_system_event system_event;
        char padding[256];
    };
    uint64_t kvm_valid_regs;
    uint64_t kvm_dirty_regs;
    union { char padding[2048]; } s;    /* struct kvm_sync_regs: unused */
};
""")


ffi = load(__name__, __file__, _declare)
libc = ffi.dlopen(None)
