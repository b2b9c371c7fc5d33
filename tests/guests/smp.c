/*
 * smp: brings up every CPU listed in the MPTable and has each one report in.
 *
 * The BSP finds the MP floating pointer ("_MP_", EBDA 0x9fc00-0x9ffff, else the
 * BIOS area 0xf0000-0xfffff), walks the processor entries of the "PCMP" table, then
 * wakes each listed AP with INIT-SIPI-SIPI into trampoline.S (real -> protected ->
 * long mode on the BSP's page tables) at TRAMP_BASE (0x6000, SIPI vector 0x06).
 *
 * APIC access: x2APIC MSRs when CPUID.1:ECX[21] is set (no MMIO, no page-table
 * changes; all handled in-kernel by KVM), otherwise the xAPIC MMIO page at
 * IA32_APIC_BASE (0xfee00000, above the 1 GiB boot identity map, so it is mapped
 * uncached into the 3-4 GiB slot first). `apic=xapic` / `apic=x2apic` on the
 * command line forces a mode. APIC ids are read from the LAPIC ID register (the
 * ground truth for IPI routing); a CPUID.1:EBX[31:24] that disagrees is reported.
 *
 * Output (the AP lines come in any order; lines never interleave, the console
 * is guarded by an xchg spinlock):
 *   MPTABLE CPUS <n>                 (or MPTABLE MISSING; MPTABLE BAD_CHECKSUM warns)
 *   APIC x2apic | APIC xapic <base>
 *   CPU <apic id> ONLINE             (the BSP first, then one per AP that checked in)
 *   CPU <apic id> CPUID_APIC_ID <id> (only if CPUID's initial APIC id disagrees)
 *   CPU <apic id> TIMEOUT            (an MPTable AP that never checked in)
 *   CPUS <number online, BSP included>
 *   DONE
 * then resets. Command line: wait=<ms> (default 10000, TSC-based, approximate) bounds
 * the wait for the APs. After its last line the BSP keeps the console lock, so a
 * straggler AP cannot print after DONE.
 */
#include "lib.h"
#include "smp.h"

#define MAX_CPUS (MAX_APS + 1)
#define DEFAULT_WAIT_MS 10000

#define MSR_APIC_BASE 0x1b
#define APIC_BASE_EXTD (1ULL << 10)
#define APIC_BASE_EN (1ULL << 11)
#define X2APIC_MSR(off) (0x800 + ((off) >> 4))
#define APIC_ID 0x20
#define APIC_SVR 0xf0
#define APIC_ICR_LO 0x300
#define APIC_ICR_HI 0x310
#define ICR_INIT 0x00004500     /* delivery mode INIT, level assert, edge */
#define ICR_STARTUP 0x00004600  /* delivery mode StartUp, level assert */
#define ICR_BUSY (1u << 12)

extern const u8 ap_tramp_start[], ap_tramp_end[];
extern const u8 tr_cr3[], tr_entry[], tr_stack_base[], tr_count[];

static u8 ap_stacks[MAX_APS << AP_STACK_SHIFT] __attribute__((aligned(4096))) NOINIT;

static u32 use_x2apic;
static u64 lapic_base;
static volatile u32 checked_in;
static volatile u32 ap_ids[MAX_APS]; /* per trampoline slot: APIC id + 1 once checked in */

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

/* Per-CPU: switch this CPU's LAPIC to the chosen mode. */
static void lapic_cpu_init(void)
{
    if (use_x2apic)
        wrmsr(MSR_APIC_BASE, rdmsr(MSR_APIC_BASE) | APIC_BASE_EN | APIC_BASE_EXTD);
}

static void announce(u32 id)
{
    u32 a, b, c, d;
    cpuid(1, 0, &a, &b, &c, &d);
    puts_raw("CPU ");
    put_dec(id);
    puts(" ONLINE");
    if ((b >> 24) != (id & 0xff)) {
        puts_raw("CPU ");
        put_dec(id);
        puts_raw(" CPUID_APIC_ID ");
        put_dec(b >> 24);
        serial_putc('\n');
    }
}

void ap_main(u32 slot)
{
    lapic_cpu_init();
    u32 id = lapic_id();
    spin_lock(&console_lock);
    announce(id);
    /* Checked in under the lock: once the BSP holds it, ONLINE lines and the count agree. */
    ap_ids[slot] = id + 1;
    __atomic_fetch_add(&checked_in, 1, __ATOMIC_SEQ_CST);
    spin_unlock(&console_lock);
    halt_forever();
}

static u8 sum8(const u8 *p, u32 n)
{
    u8 s = 0;
    while (n--)
        s += *p++;
    return s;
}

static const u8 *scan_mpfp(u64 start, u64 end)
{
    for (u64 a = start; a + 16 <= end; a += 16) {
        const u8 *p = (const u8 *)(usize)a;
        if (p[0] == '_' && p[1] == 'M' && p[2] == 'P' && p[3] == '_' && sum8(p, 16) == 0)
            return p;
    }
    return NULL;
}

/* Fills ids[] with the enabled processors' APIC ids; returns their number (0: no table). */
static u32 read_mptable(u32 *ids, u32 max)
{
    const u8 *fp = scan_mpfp(0x9fc00, 0xa0000);
    if (!fp)
        fp = scan_mpfp(0xf0000, 0x100000);
    if (!fp) {
        puts("MPTABLE MISSING");
        return 0;
    }
    const u8 *ct = (const u8 *)(usize)bp_u32(fp, 4);
    if (!ct || ct[0] != 'P' || ct[1] != 'C' || ct[2] != 'M' || ct[3] != 'P') {
        puts("MPTABLE MISSING");
        return 0;
    }
    u32 len = bp_u32(ct, 4) & 0xffff, count = bp_u32(ct, 34) & 0xffff;
    if (sum8(ct, len) != 0)
        puts("MPTABLE BAD_CHECKSUM");
    const u8 *e = ct + 44, *end = ct + len;
    u32 n = 0;
    for (u32 i = 0; i < count && e < end; i++) {
        if (e[0] == 0) { /* processor: type, apic id, version, flags (bit 0 enabled) */
            if ((e[3] & 1) && n < max)
                ids[n++] = e[1];
            e += 20;
        } else if (e[0] <= 4) {
            e += 8;
        } else {
            break;
        }
    }
    puts_raw("MPTABLE CPUS ");
    put_dec(n);
    serial_putc('\n');
    return n;
}

static void setup_trampoline(void)
{
    u8 *t = (u8 *)TRAMP_BASE;
    memcpy(t, ap_tramp_start, (usize)(ap_tramp_end - ap_tramp_start));
    *(volatile u64 *)(t + (tr_cr3 - ap_tramp_start)) = read_cr3();
    *(volatile u64 *)(t + (tr_entry - ap_tramp_start)) = (u64)(usize)ap_main;
    *(volatile u64 *)(t + (tr_stack_base - ap_tramp_start)) = (u64)(usize)ap_stacks;
    *(volatile u32 *)(t + (tr_count - ap_tramp_start)) = 0;
    barrier();
}

void guest_main(u8 *zp)
{
    const char *cl = cmdline_of(zp);
    u32 ids[MAX_CPUS];
    u32 ncpus = read_mptable(ids, MAX_CPUS);

    u32 a, b, c, d;
    cpuid(1, 0, &a, &b, &c, &d);
    char mode[8];
    use_x2apic = (c >> 21) & 1;
    if (cmdline_get(cl, "apic", mode, sizeof(mode)))
        use_x2apic = strcmp(mode, "x2apic") == 0 && use_x2apic;
    if (use_x2apic) {
        puts("APIC x2apic");
    } else {
        lapic_base = rdmsr(MSR_APIC_BASE) & 0x000ffffffffff000ULL;
        puts_raw("APIC xapic ");
        put_hex(lapic_base);
        serial_putc('\n');
        if (lapic_base >= (1ULL << 30) && map_identity_2m_uc(lapic_base) != 0) {
            puts("APIC MAP FAILED");
            puts("DONE");
            reset();
        }
    }
    lapic_cpu_init();
    lapic_write(APIC_SVR, 0x1ff); /* software-enable, spurious vector 0xff (IF stays 0) */
    u32 bsp = lapic_id();
    spin_lock(&console_lock);
    announce(bsp);
    spin_unlock(&console_lock);

    setup_trampoline();
    u32 naps = 0;
    for (u32 i = 0; i < ncpus; i++) {
        if (ids[i] == bsp)
            continue;
        naps++;
        send_ipi(ids[i], ICR_INIT);
        delay(100);
        send_ipi(ids[i], ICR_STARTUP | (TRAMP_BASE >> 12));
        delay(100);
        send_ipi(ids[i], ICR_STARTUP | (TRAMP_BASE >> 12));
    }

    u64 deadline = tsc_deadline_ms(cmdline_get_u64(cl, "wait", DEFAULT_WAIT_MS));
    while (checked_in < naps && rdtsc() < deadline)
        cpu_relax();

    spin_lock(&console_lock); /* never released: nothing prints after DONE */
    u32 online = checked_in;
    for (u32 i = 0; i < ncpus; i++) {
        if (ids[i] == bsp)
            continue;
        u32 seen = 0;
        for (u32 j = 0; j < MAX_APS; j++)
            seen |= ap_ids[j] == ids[i] + 1;
        if (!seen) {
            puts_raw("CPU ");
            put_dec(ids[i]);
            puts(" TIMEOUT");
        }
    }
    puts_raw("CPUS ");
    put_dec(1 + online);
    serial_putc('\n');
    puts("DONE");
    reset();
}
