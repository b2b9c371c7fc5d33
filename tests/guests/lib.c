/* Shared helpers for the tiny test guests. Keep it small: every instruction is emulated on nested PVM. */
#include "lib.h"

spinlock_t console_lock;

/* Initialised data: bootinfo checks it to prove the loader copied the data PT_LOAD. */
volatile u64 lib_data_magic = LIB_DATA_MAGIC; /* "tinygues" */

u32 bp_u32(const u8 *bp, u32 off)
{
    return (u32)bp[off] | (u32)bp[off + 1] << 8 | (u32)bp[off + 2] << 16 | (u32)bp[off + 3] << 24;
}

u64 bp_u64(const u8 *bp, u32 off) { return (u64)bp_u32(bp, off) | (u64)bp_u32(bp, off + 4) << 32; }

void *memcpy(void *dst, const void *src, usize n)
{
    u8 *d = dst;
    const u8 *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memset(void *dst, int c, usize n)
{
    u8 *d = dst;
    while (n--)
        *d++ = (u8)c;
    return dst;
}

usize strlen(const char *s)
{
    usize n = 0;
    while (s[n])
        n++;
    return n;
}

int strncmp(const char *a, const char *b, usize n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (u8)*a - (u8)*b;
        if (!*a)
            return 0;
    }
    return 0;
}

int strcmp(const char *a, const char *b) { return strncmp(a, b, (usize)-1); }

void serial_putc(char c)
{
    /* Bounded wait for THRE: a VMM whose LSR never reports it costs time, not a hang. */
    for (int i = 0; i < 256 && !(inb(COM1_PORT + 5) & UART_LSR_THRE); i++)
        cpu_relax();
    outb(COM1_PORT, (u8)c);
}

void puts_raw(const char *s)
{
    while (*s)
        serial_putc(*s++);
}

void puts(const char *s)
{
    puts_raw(s);
    serial_putc('\n');
}

void put_hex(u64 v)
{
    char buf[19];
    int i = sizeof(buf);
    buf[--i] = 0;
    do {
        buf[--i] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v);
    buf[--i] = 'x';
    buf[--i] = '0';
    puts_raw(&buf[i]);
}

void put_dec(u64 v)
{
    char buf[21];
    int i = sizeof(buf);
    buf[--i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts_raw(&buf[i]);
}

int serial_getc_nowait(void)
{
    if (!(inb(COM1_PORT + 5) & UART_LSR_DR))
        return -1;
    return inb(COM1_PORT);
}

void spin_lock(spinlock_t *l)
{
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE)) /* xchg */
        while (*l)
            cpu_relax();
}

void spin_unlock(spinlock_t *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

int parse_u64(const char *s, u64 *out)
{
    const char *p = s;
    u64 v = 0;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        p += 2;
        const char *digits = p;
        for (;; p++) {
            u8 c = (u8)*p, d;
            if (c >= '0' && c <= '9')
                d = c - '0';
            else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
                d = (c | 0x20) - 'a' + 10;
            else
                break;
            v = v << 4 | d;
        }
        if (p == digits)
            return 0;
    } else {
        for (; *p >= '0' && *p <= '9'; p++)
            v = v * 10 + (u64)(*p - '0');
        if (p == s)
            return 0;
    }
    *out = v;
    return (int)(p - s);
}

const char *cmdline_of(const u8 *zero_page)
{
    u32 ptr = bp_u32(zero_page, BP_CMD_LINE_PTR);
    return ptr ? (const char *)(usize)ptr : "";
}

int cmdline_get(const char *cmdline, const char *key, char *buf, usize cap)
{
    usize klen = strlen(key);
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *word = p;
        while (*p && *p != ' ')
            p++;
        if ((usize)(p - word) >= klen && strncmp(word, key, klen) == 0 &&
            (word[klen] == '=' || word + klen == p)) {
            const char *v = word[klen] == '=' ? word + klen + 1 : p;
            usize n = 0;
            while (v + n < p && n + 1 < cap) {
                buf[n] = v[n];
                n++;
            }
            buf[n] = 0;
            return 1;
        }
    }
    return 0;
}

u64 cmdline_get_u64(const char *cmdline, const char *key, u64 dflt)
{
    char buf[24];
    u64 v;
    if (!cmdline_get(cmdline, key, buf, sizeof(buf)) || !parse_u64(buf, &v))
        return dflt;
    return v;
}

void delay(u64 n)
{
    while (n--)
        cpu_relax();
}

u64 tsc_hz(void)
{
    u32 a, b, c, d, max;
    cpuid(0, 0, &max, &b, &c, &d);
    if (max >= 0x15) {
        cpuid(0x15, 0, &a, &b, &c, &d);
        if (a && b && c)
            return (u64)c * b / a;
    }
    if (max >= 0x16) {
        cpuid(0x16, 0, &a, &b, &c, &d);
        if (a & 0xffff)
            return (u64)(a & 0xffff) * 1000000;
    }
    cpuid(0x40000000, 0, &max, &b, &c, &d);
    if (max >= 0x40000010 && max < 0x40000100) {
        cpuid(0x40000010, 0, &a, &b, &c, &d);
        if (a)
            return (u64)a * 1000;
    }
    return 2000000000ULL;
}

u64 tsc_deadline_ms(u64 ms) { return rdtsc() + ms * (tsc_hz() / 1000); }

#define PTE_P 0x1ULL
#define PTE_RW 0x2ULL
#define PTE_PWT 0x8ULL
#define PTE_PCD 0x10ULL
#define PTE_PS 0x80ULL
#define PTE_ADDR 0x000ffffffffff000ULL

/* Page directories for high (>= 1 GiB) mappings; zeroed when handed out. */
static u64 extra_pd[2][512] __attribute__((aligned(4096))) NOINIT;
static u32 extra_pd_used;

int map_identity_2m_uc(u64 phys)
{
    u64 *pml4 = (u64 *)(usize)(read_cr3() & PTE_ADDR);
    u64 e4 = pml4[(phys >> 39) & 511];
    if (!(e4 & PTE_P))
        return -1;
    u64 *pdpt = (u64 *)(usize)(e4 & PTE_ADDR);
    u64 e3 = pdpt[(phys >> 30) & 511];
    u64 *pd;
    if (!(e3 & PTE_P)) {
        if (extra_pd_used >= 2)
            return -1;
        pd = extra_pd[extra_pd_used++];
        memset(pd, 0, 4096);
        pdpt[(phys >> 30) & 511] = (u64)(usize)pd | PTE_P | PTE_RW;
    } else if (e3 & PTE_PS) {
        return 0; /* already covered by a 1 GiB page */
    } else {
        pd = (u64 *)(usize)(e3 & PTE_ADDR);
    }
    pd[(phys >> 21) & 511] = (phys & ~0x1fffffULL) | PTE_P | PTE_RW | PTE_PWT | PTE_PCD | PTE_PS;
    write_cr3(read_cr3()); /* flush the TLB */
    return 0;
}

NORETURN void halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli; hlt" ::: "memory");
}

NORETURN void reset(void)
{
    outb(I8042_CMD_PORT, I8042_CMD_RESET);
    /* The VMM stops the VM on the reset; never run on into anything else meanwhile. */
    halt_forever();
}
