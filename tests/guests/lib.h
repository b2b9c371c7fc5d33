/*
 * Shared helpers for the tiny freestanding test guests (see README.md).
 *
 * The guests are entered by the VMM in 64-bit long mode (Linux 64-bit boot
 * protocol): identity map of the first 1 GiB, RSI = zero page. start.S moves to
 * a private stack, zeroes .bss and calls guest_main(zero_page).
 */
#ifndef TINY_GUEST_LIB_H
#define TINY_GUEST_LIB_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned long usize;

#define NULL ((void *)0)
#define NORETURN __attribute__((noreturn))

/* Ports */
#define COM1_PORT 0x3f8      /* 16550: THR/RBR at +0, LSR at +5 */
#define UART_LSR_DR 0x01     /* LSR bit 0: receive data ready */
#define UART_LSR_THRE 0x20   /* LSR bit 5: transmit holding register empty */
#define I8042_CMD_PORT 0x64
#define I8042_CMD_RESET 0xfe

/* struct boot_params ("zero page") offsets used by the guests */
#define BP_E820_ENTRIES 0x1e8 /* u8 */
#define BP_RAMDISK_IMAGE 0x218 /* u32 */
#define BP_RAMDISK_SIZE 0x21c /* u32 */
#define BP_CMD_LINE_PTR 0x228 /* u32 */
#define BP_E820_TABLE 0x2d0 /* 20-byte entries: u64 addr, u64 size, u32 type */
#define BP_E820_MAX 128

/* Entry point every guest defines; `zero_page` is the RSI the VMM passed. */
void guest_main(u8 *zero_page);

/* Loader checks: start.S records the OR of all .bss words before zeroing them;
 * lib_data_magic is initialised data (0x74696e7967756573). */
extern volatile u64 boot_bss_dirty;
extern volatile u64 lib_data_magic;
#define LIB_DATA_MAGIC 0x74696e7967756573ULL

/* Never zeroed, never in the file: stacks and page tables (see link.ld). */
#define NOINIT __attribute__((section(".noinit")))

/* Port I/O and CPU helpers */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline u64 rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((u64)hi << 32) | lo;
}
static inline void wrmsr(u32 msr, u64 v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}
static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}
static inline u64 read_cr0(void) { u64 v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline u64 read_cr3(void) { u64 v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline u64 read_cr4(void) { u64 v; __asm__ volatile("mov %%cr4, %0" : "=r"(v)); return v; }
static inline void write_cr3(u64 v) { __asm__ volatile("mov %0, %%cr3" : : "r"(v) : "memory"); }
static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}
static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)addr; }
static inline void mmio_write32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }

/* Zero-page field access (unaligned-safe byte loads, no struct layout games). */
static inline u8 bp_u8(const u8 *bp, u32 off) { return bp[off]; }
u32 bp_u32(const u8 *bp, u32 off);
u64 bp_u64(const u8 *bp, u32 off);

/* Freestanding libc bits (gcc may emit calls to these). */
void *memcpy(void *dst, const void *src, usize n);
void *memset(void *dst, int c, usize n);
usize strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, usize n);

/* Serial console (COM1). Lines end with "\n" only. */
void serial_putc(char c);
void puts_raw(const char *s);            /* no newline appended */
void puts(const char *s);                /* appends "\n" */
void put_hex(u64 v);                     /* "0x" + minimal lowercase hex digits */
void put_dec(u64 v);                     /* decimal */
int serial_getc_nowait(void);            /* -1 when LSR.DR is clear */

/* Spinlock (xchg); the console lock serialises lines across vCPUs. */
typedef volatile u32 spinlock_t;
void spin_lock(spinlock_t *l);
void spin_unlock(spinlock_t *l);
extern spinlock_t console_lock;

/* Number parsing: decimal, or hex with a 0x prefix. Returns chars consumed (0 = none). */
int parse_u64(const char *s, u64 *out);
/* Kernel command line from the zero page ("" when cmd_line_ptr is 0). */
const char *cmdline_of(const u8 *zero_page);
/*
 * Look up `key=value` among the space-separated words of cmdline. Copies the
 * value (NUL-terminated, truncated to cap-1) into buf and returns 1, or 0 if absent.
 */
int cmdline_get(const char *cmdline, const char *key, char *buf, usize cap);
/* cmdline_get + parse_u64, falling back to `dflt` when absent or unparsable. */
u64 cmdline_get_u64(const char *cmdline, const char *key, u64 dflt);

/* Busy-wait `n` pause iterations (~2 us each when emulated, ns on bare metal). */
void delay(u64 n);

/*
 * Best-effort TSC frequency: CPUID 0x15 (crystal * ratio), else 0x16 (base MHz),
 * else KVM's 0x40000010 (kHz), else a 2 GHz guess. Timeouts built on it are
 * approximate (within ~2x) but, unlike loop counts, do not depend on whether
 * the guest's instructions are emulated.
 */
u64 tsc_hz(void);
/* rdtsc() value `ms` milliseconds from now. */
u64 tsc_deadline_ms(u64 ms);

/*
 * Map the 2 MiB page holding physical address `phys` (>= 1 GiB, < 512 GiB) into the
 * boot identity map as uncached (PCD|PWT), adding a page directory from .bss for the
 * 1 GiB PDPT slot if the VMM left it empty. Returns 0 on success, -1 if the boot
 * page tables are not the expected 4-level layout.
 */
int map_identity_2m_uc(u64 phys);

/* Reset through the i8042 (out 0xFE to port 0x64), then cli;hlt forever. */
NORETURN void reset(void);
/* cli;hlt forever. */
NORETURN void halt_forever(void);

#endif
