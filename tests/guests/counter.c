/*
 * counter: every vCPU counts in memory and prints each value, for snapshot tests.
 *
 * Each CPU keeps its count in guest RAM (`counts[id]`) and prints one line per step
 *   CPU <id> <n>           n = 0, 1, ... count-1, each exactly once
 * with a `delay=<n>` pause loop between steps. A snapshot taken at any point and
 * restored must continue every CPU's sequence with no value lost or repeated (the
 * console lock keeps lines whole; a line cut by the snapshot is finished after it).
 * The BSP waits for every AP to finish, then prints DONE and resets.
 *
 * Command line: count=<n> (default 100), delay=<n> (default 2000), cpus=<n> (default
 * 1; APIC ids 0..n-1 as the VMM lays them out; the APs start through trampoline.S
 * with INIT-SIPI-SIPI, as in smp.c).
 */
#include "lib.h"
#include "smp.h"

#define MAX_CPUS 8
#define MSR_APIC_BASE 0x1b
#define APIC_BASE_EXTD (1ULL << 10)
#define APIC_BASE_EN (1ULL << 11)
#define X2APIC_MSR(off) (0x800 + ((off) >> 4))
#define APIC_ID 0x20
#define APIC_SVR 0xf0
#define APIC_ICR_LO 0x300
#define APIC_ICR_HI 0x310
#define ICR_INIT 0x00004500
#define ICR_STARTUP 0x00004600
#define ICR_BUSY (1u << 12)

extern const u8 ap_tramp_start[], ap_tramp_end[];
extern const u8 tr_cr3[], tr_entry[], tr_stack_base[], tr_count[];

static u8 ap_stacks[MAX_CPUS << AP_STACK_SHIFT] __attribute__((aligned(4096))) NOINIT;
static u32 use_x2apic;
static u64 lapic_base;
static u64 count_to, step_delay;
static volatile u64 counts[MAX_CPUS];
static volatile u32 finished;

static u32 lapic_read(u32 off)
{
    return use_x2apic ? (u32)rdmsr(X2APIC_MSR(off)) : mmio_read32(lapic_base + off);
}

static void lapic_write(u32 off, u32 v)
{
    if (use_x2apic)
        wrmsr(X2APIC_MSR(off), v);
    else
        mmio_write32(lapic_base + off, v);
}

static u32 lapic_id(void)
{
    u32 id = lapic_read(APIC_ID);
    return use_x2apic ? id : id >> 24;
}

static void lapic_cpu_init(void)
{
    if (use_x2apic)
        wrmsr(MSR_APIC_BASE, rdmsr(MSR_APIC_BASE) | APIC_BASE_EN | APIC_BASE_EXTD);
}

static void send_ipi(u32 dest, u32 icr)
{
    if (use_x2apic) {
        wrmsr(X2APIC_MSR(APIC_ICR_LO), (u64)dest << 32 | icr);
        return;
    }
    lapic_write(APIC_ICR_HI, dest << 24);
    lapic_write(APIC_ICR_LO, icr);
    for (int i = 0; i < 1000 && (lapic_read(APIC_ICR_LO) & ICR_BUSY); i++)
        cpu_relax();
}

static void count(u32 id)
{
    while (counts[id] < count_to) {
        spin_lock(&console_lock);
        puts_raw("CPU ");
        put_dec(id);
        serial_putc(' ');
        put_dec(counts[id]);
        serial_putc('\n');
        counts[id] = counts[id] + 1;   /* only once the whole line is out */
        spin_unlock(&console_lock);
        delay(step_delay);
    }
}

void ap_main(u32 slot)
{
    (void)slot;
    lapic_cpu_init();
    u32 id = lapic_id();
    if (id < MAX_CPUS)
        count(id);
    __atomic_fetch_add(&finished, 1, __ATOMIC_SEQ_CST);
    halt_forever();
}

void guest_main(u8 *zp)
{
    const char *cl = cmdline_of(zp);
    count_to = cmdline_get_u64(cl, "count", 100);
    step_delay = cmdline_get_u64(cl, "delay", 2000);
    u32 ncpus = (u32)cmdline_get_u64(cl, "cpus", 1);
    if (ncpus < 1 || ncpus > MAX_CPUS)
        ncpus = 1;

    u32 a, b, c, d;
    cpuid(1, 0, &a, &b, &c, &d);
    use_x2apic = (c >> 21) & 1;
    if (!use_x2apic) {
        lapic_base = rdmsr(MSR_APIC_BASE) & 0x000ffffffffff000ULL;
        if (lapic_base >= (1ULL << 30) && map_identity_2m_uc(lapic_base) != 0) {
            puts("APIC MAP FAILED");
            reset();
        }
    }
    lapic_cpu_init();
    lapic_write(APIC_SVR, 0x1ff);
    u32 bsp = lapic_id();
    puts("COUNTER START");

    if (ncpus > 1) {
        u8 *t = (u8 *)TRAMP_BASE;
        memcpy(t, ap_tramp_start, (usize)(ap_tramp_end - ap_tramp_start));
        *(volatile u64 *)(t + (tr_cr3 - ap_tramp_start)) = read_cr3();
        *(volatile u64 *)(t + (tr_entry - ap_tramp_start)) = (u64)(usize)ap_main;
        *(volatile u64 *)(t + (tr_stack_base - ap_tramp_start)) = (u64)(usize)ap_stacks;
        *(volatile u32 *)(t + (tr_count - ap_tramp_start)) = 0;
        barrier();
        for (u32 i = 0; i < ncpus; i++) {
            if (i == bsp)
                continue;
            send_ipi(i, ICR_INIT);
            delay(100);
            send_ipi(i, ICR_STARTUP | (TRAMP_BASE >> 12));
            delay(100);
            send_ipi(i, ICR_STARTUP | (TRAMP_BASE >> 12));
        }
    }
    count(bsp);
    while (finished < ncpus - 1)
        cpu_relax();
    spin_lock(&console_lock);
    puts("DONE");
    reset();
}
