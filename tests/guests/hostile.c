/*
 * hostile: abuses every virtio-mmio device it finds (windows from 0xd0000000, 4 KiB
 * apart) the way a compromised guest kernel could, then checks the devices still work.
 *
 *   seed=N     PRNG seed (xorshift64*)
 *   rounds=N   attack rounds over all devices (default 40)
 *
 * Phase 1, for every device: a plausible bring-up whose available index jumps far past
 * the queue size, kicked on every queue (each device must answer with NEEDS_RESET).
 * Phase 2, `rounds` times for every device, one attack picked at random: random register
 * and config-space writes; rings at wild guest-physical addresses; valid rings holding
 * hostile descriptors (wild addresses, huge lengths, loops, bogus indirect tables,
 * writable buffers where the device reads); bad queue sizes; notifies on unready or
 * nonexistent queues; status writes out of order. Each attack ends with a driver reset.
 * Phase 3: a clean bring-up and one real request per device: rng fills a buffer, blk
 * reads sector 0, net and vsock consume a TX buffer.
 *
 * Output: "SLOT <i> id=<dev> needs_reset=<n>" per device, "RECOVERED <name> <detail>"
 * per device that worked again, "HOSTILE DONE", then the i8042 reset.
 */
#include "lib.h"

#define MMIO_BASE 0xd0000000ULL
#define MMIO_STRIDE 0x1000
#define MAX_SLOTS 8

#define R_MAGIC 0x000
#define R_DEVICE_ID 0x008
#define R_DEVICE_FEATURES 0x010
#define R_DEVICE_FEATURES_SEL 0x014
#define R_DRIVER_FEATURES 0x020
#define R_DRIVER_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_INTERRUPT_ACK 0x064
#define R_STATUS 0x070
#define R_QUEUE_DESC 0x080
#define R_QUEUE_AVAIL 0x090
#define R_QUEUE_USED 0x0a0
#define R_CONFIG 0x100
#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 0x40
#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4

#define QSIZE 16
#define NQ 3

#define ID_NET 1
#define ID_BLK 2
#define ID_RNG 4
#define ID_VSOCK 19

struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct avail { u16 flags; u16 idx; u16 ring[QSIZE]; u16 used_event; };
struct used_elem { u32 id; u32 len; };
struct used { u16 flags; u16 idx; struct used_elem ring[QSIZE]; u16 avail_event; };

static struct desc descs[NQ][QSIZE] __attribute__((aligned(16)));
static struct avail avails[NQ] __attribute__((aligned(2)));
static struct used useds[NQ] __attribute__((aligned(4)));
static struct desc indirect[8] __attribute__((aligned(16)));
static u8 bufs[4][2048] __attribute__((aligned(16)));

static u64 rng_state;
static u64 slots[MAX_SLOTS];
static u32 slot_ids[MAX_SLOTS];
static u64 needs_reset[MAX_SLOTS];
static int nslots;

static u64 rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static void w(u64 base, u32 off, u32 v) { mmio_write32(base + off, v); }
static u32 r(u64 base, u32 off) { return mmio_read32(base + off); }
static void w64(u64 base, u32 off, u64 v) { w(base, off, (u32)v); w(base, off + 4, (u32)(v >> 32)); }

static int nqueues(u32 id)
{
    return id == ID_VSOCK ? 3 : id == ID_NET ? 2 : 1;
}

/* A guest-physical address that is not guest RAM, or barely is. */
static u64 wild_addr(void)
{
    switch (rnd() % 5) {
    case 0: return 0xffffffffffff0000ULL | (rnd() & 0xfff0);
    case 1: return 0x40000000ULL + (rnd() & 0xfffff0);      /* past a small VM's RAM */
    case 2: return MMIO_BASE;                               /* the MMIO hole */
    case 3: return (u64)-16;
    default: return rnd() & ~0xfULL;
    }
}

static void note_status(int s)
{
    if (r(slots[s], R_STATUS) & S_NEEDS_RESET)
        needs_reset[s]++;
}

static void driver_reset(int s)
{
    w(slots[s], R_INTERRUPT_ACK, 0xffffffff);
    w(slots[s], R_STATUS, 0);
}

static int negotiate(u64 base)
{
    w(base, R_STATUS, 0);
    w(base, R_STATUS, S_ACK | S_DRIVER);
    w(base, R_DRIVER_FEATURES_SEL, 0);
    w(base, R_DRIVER_FEATURES, 0);
    w(base, R_DRIVER_FEATURES_SEL, 1);
    w(base, R_DRIVER_FEATURES, 1);          /* VERSION_1 */
    w(base, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    return (r(base, R_STATUS) & S_FEATURES_OK) != 0;
}

static void clear_rings(void)
{
    memset(descs, 0, sizeof(descs));
    memset(avails, 0, sizeof(avails));
    memset(useds, 0, sizeof(useds));
}

static void setup_queue(u64 base, int q, u32 size, u64 d, u64 a, u64 u)
{
    w(base, R_QUEUE_SEL, q);
    w(base, R_QUEUE_NUM, size);
    w64(base, R_QUEUE_DESC, d);
    w64(base, R_QUEUE_AVAIL, a);
    w64(base, R_QUEUE_USED, u);
    w(base, R_QUEUE_READY, 1);
}

static void valid_queues(u64 base, u32 id)
{
    for (int q = 0; q < nqueues(id); q++)
        setup_queue(base, q, QSIZE, (u64)descs[q], (u64)&avails[q], (u64)&useds[q]);
}

static void driver_ok(u64 base)
{
    w(base, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
}

static void kick_all(u64 base, u32 id)
{
    for (int q = 0; q < nqueues(id); q++)
        w(base, R_QUEUE_NOTIFY, q);
}

/* --- attacks ---------------------------------------------------------------------- */

static void attack_avail_jump(int s)
{
    u64 base = slots[s];
    clear_rings();
    if (!negotiate(base))
        return;
    valid_queues(base, slot_ids[s]);
    driver_ok(base);
    for (int q = 0; q < NQ; q++)
        avails[q].idx = (u16)(QSIZE + 1 + (rnd() % 30000));
    barrier();
    kick_all(base, slot_ids[s]);
}

static void attack_random_regs(int s)
{
    u64 base = slots[s];
    for (int i = 0; i < 48; i++) {
        u32 off = (rnd() % 0x80) * 4;
        u32 v = (u32)rnd();
        if (off == R_QUEUE_NOTIFY)
            v &= 0xffff;
        if (off >= R_QUEUE_DESC && off < R_QUEUE_USED + 8)
            v |= 0x80000000;        /* ring addresses off guest RAM: never our own code */
        w(base, off, v);
    }
    for (int i = 0; i < 16; i++) {
        u32 off = R_CONFIG + (rnd() % 64);
        switch (rnd() % 3) {
        case 0: *(volatile u8 *)(base + off) = (u8)rnd(); break;
        case 1: *(volatile u16 *)(base + (off & ~1U)) = (u16)rnd(); break;
        default: *(volatile u32 *)(base + (off & ~3U)) = (u32)rnd(); break;
        }
        (void)*(volatile u32 *)(base + (off & ~3U));
    }
}

static void attack_wild_rings(int s)
{
    u64 base = slots[s];
    if (!negotiate(base))
        return;
    for (int q = 0; q < nqueues(slot_ids[s]); q++) {
        u64 d = (u64)descs[q], a = (u64)&avails[q], u = (u64)&useds[q];
        switch (rnd() % 3) {
        case 0: d = wild_addr(); break;
        case 1: a = wild_addr(); break;
        default: u = wild_addr(); break;
        }
        setup_queue(base, q, QSIZE, d, a, u);
    }
    driver_ok(base);
    kick_all(base, slot_ids[s]);
}

static void hostile_desc(struct desc *d, int i)
{
    d->addr = (u64)bufs[i & 3];
    d->len = 512;
    d->flags = (rnd() & 1) ? F_WRITE : 0;
    d->next = 0;
    switch (rnd() % 7) {
    case 0: d->addr = wild_addr(); break;
    case 1: d->len = 0xffffffff; break;
    case 2: d->flags |= F_NEXT; d->next = (u16)i; break;            /* loop to itself */
    case 3: d->flags |= F_NEXT; d->next = (u16)(QSIZE + rnd() % 100); break;
    case 4:                                                          /* bogus indirect */
        d->flags = F_INDIRECT;
        d->addr = (rnd() & 1) ? wild_addr() : (u64)indirect;
        d->len = (rnd() & 1) ? 7 : (u32)sizeof(indirect);
        for (int k = 0; k < 8; k++) {
            indirect[k].addr = wild_addr();
            indirect[k].len = (u32)rnd();
            indirect[k].flags = (u16)(rnd() & 7);
            indirect[k].next = (u16)(rnd() % 12);
        }
        break;
    case 5: d->len = 0; break;
    default: d->len = 1; d->flags |= F_NEXT; d->next = (u16)((i + 1) % QSIZE); break;
    }
}

static void attack_hostile_descs(int s)
{
    u64 base = slots[s];
    clear_rings();
    if (!negotiate(base))
        return;
    valid_queues(base, slot_ids[s]);
    driver_ok(base);
    for (int q = 0; q < nqueues(slot_ids[s]); q++) {
        for (int i = 0; i < QSIZE; i++)
            hostile_desc(&descs[q][i], i);
        int n = 1 + (int)(rnd() % QSIZE);
        for (int i = 0; i < n; i++)
            avails[q].ring[i] = (u16)((rnd() & 3) == 0 ? rnd() : (u64)i);
        barrier();
        avails[q].idx = (u16)n;
    }
    barrier();
    kick_all(base, slot_ids[s]);
}

static void attack_queue_sizes(int s)
{
    static const u32 sizes[] = {0, 3, 7, 65535, 0x10000, 1024, 0xffffffff};
    u64 base = slots[s];
    clear_rings();
    if (!negotiate(base))
        return;
    for (int q = 0; q < nqueues(slot_ids[s]); q++)
        setup_queue(base, q, sizes[rnd() % 7], (u64)descs[q], (u64)&avails[q], (u64)&useds[q]);
    driver_ok(base);
    kick_all(base, slot_ids[s]);
}

static void attack_notify_unready(int s)
{
    u64 base = slots[s];
    if (rnd() & 1)
        negotiate(base);
    for (int i = 0; i < 8; i++)
        w(base, R_QUEUE_NOTIFY, (u32)(rnd() % 5));
    w(base, R_QUEUE_NOTIFY, 0xffff);
    w(base, R_STATUS, S_DRIVER_OK);                         /* out of order */
    w(base, R_QUEUE_SEL, 0xffffffff);
    w(base, R_QUEUE_READY, 1);
    w(base, R_QUEUE_NOTIFY, 0);
}

typedef void (*attack_fn)(int);
static const attack_fn attacks[] = {
    attack_random_regs, attack_wild_rings, attack_hostile_descs, attack_avail_jump,
    attack_queue_sizes, attack_notify_unready,
};

/* --- recovery --------------------------------------------------------------------- */

static int wait_used(int q, u16 want)
{
    u64 deadline = tsc_deadline_ms(2000);
    while (*(volatile u16 *)&useds[q].idx != want) {
        if (rdtsc() > deadline)
            return 0;
        cpu_relax();
    }
    return 1;
}

/* Post one chain of `n` descriptors on queue q and wait for the device to use it. */
static int submit(u64 base, int q, int n)
{
    avails[q].ring[0] = 0;
    barrier();
    avails[q].idx = 1;
    barrier();
    w(base, R_QUEUE_NOTIFY, q);
    (void)n;
    return wait_used(q, 1);
}

static void set_desc(int q, int i, void *addr, u32 len, u16 flags, u16 next)
{
    descs[q][i].addr = (u64)addr;
    descs[q][i].len = len;
    descs[q][i].flags = flags;
    descs[q][i].next = next;
}

static void recover(int s)
{
    u64 base = slots[s];
    u32 id = slot_ids[s];
    clear_rings();
    memset(bufs, 0, sizeof(bufs));
    if (!negotiate(base)) {
        puts("FAIL features refused after reset");
        return;
    }
    valid_queues(base, id);
    driver_ok(base);
    if (r(base, R_STATUS) & S_NEEDS_RESET) {
        puts("FAIL needs reset after a clean bring-up");
        return;
    }
    int ok = 0;
    if (id == ID_RNG) {
        set_desc(0, 0, bufs[0], 32, F_WRITE, 0);
        ok = submit(base, 0, 1) && useds[0].ring[0].len == 32;
        if (ok)
            puts("RECOVERED rng 32");
    } else if (id == ID_BLK) {
        u64 *hdr = (u64 *)bufs[0];
        hdr[0] = 0;                 /* type IN, reserved */
        hdr[1] = 0;                 /* sector 0 */
        bufs[2][0] = 0xff;
        set_desc(0, 0, hdr, 16, F_NEXT, 1);
        set_desc(0, 1, bufs[1], 512, F_NEXT | F_WRITE, 2);
        set_desc(0, 2, bufs[2], 1, F_WRITE, 0);
        ok = submit(base, 0, 3) && bufs[2][0] == 0;
        if (ok) {
            puts_raw("RECOVERED blk ");
            put_hex(*(u32 *)bufs[1]);
            puts_raw("\n");
        }
    } else if (id == ID_NET) {
        /* virtio_net_hdr (12 bytes, zero) + a 60-byte broadcast frame */
        u8 *f = bufs[0];
        for (int i = 12; i < 18; i++)
            f[i] = 0xff;
        f[24] = 0x88;
        f[25] = 0xb5;               /* local experimental ethertype */
        set_desc(1, 0, f, 12 + 60, 0, 0);
        ok = submit(base, 1, 1);
        if (ok)
            puts("RECOVERED net tx");
    } else if (id == ID_VSOCK) {
        u8 *p = bufs[0];            /* REQUEST from cid 3:1024 to host 2:52 */
        *(u64 *)(p + 0) = 3;
        *(u64 *)(p + 8) = 2;
        *(u32 *)(p + 16) = 1024;
        *(u32 *)(p + 20) = 52;
        *(u16 *)(p + 28) = 1;       /* type STREAM */
        *(u16 *)(p + 30) = 1;       /* op REQUEST */
        *(u32 *)(p + 36) = 65536;   /* buf_alloc */
        set_desc(1, 0, p, 44, 0, 0);
        ok = submit(base, 1, 1);
        if (ok)
            puts("RECOVERED vsock tx");
    }
    if (!ok) {
        puts_raw("FAIL device did not recover id=");
        put_dec(id);
        puts_raw("\n");
    }
    driver_reset(s);
}

void guest_main(u8 *zero_page)
{
    const char *cmdline = cmdline_of(zero_page);
    rng_state = cmdline_get_u64(cmdline, "seed", 1) * 0x9E3779B97F4A7C15ULL + 1;
    u64 rounds = cmdline_get_u64(cmdline, "rounds", 40);
    if (map_identity_2m_uc(MMIO_BASE) != 0) {
        puts("FAIL page tables");
        reset();
    }
    for (int i = 0; i < MAX_SLOTS; i++) {
        u64 base = MMIO_BASE + (u64)i * MMIO_STRIDE;
        if (r(base, R_MAGIC) != 0x74726976)
            break;
        slots[nslots] = base;
        slot_ids[nslots++] = r(base, R_DEVICE_ID);
    }
    for (int s = 0; s < nslots; s++) {
        attack_avail_jump(s);
        note_status(s);
        driver_reset(s);
    }
    for (u64 round = 0; round < rounds; round++) {
        for (int s = 0; s < nslots; s++) {
            attacks[rnd() % (sizeof(attacks) / sizeof(attacks[0]))](s);
            note_status(s);
            driver_reset(s);
        }
    }
    for (int s = 0; s < nslots; s++) {
        puts_raw("SLOT ");
        put_dec((u64)s);
        puts_raw(" id=");
        put_dec(slot_ids[s]);
        puts_raw(" needs_reset=");
        put_dec(needs_reset[s]);
        puts_raw("\n");
    }
    for (int s = 0; s < nslots; s++)
        recover(s);
    puts("HOSTILE DONE");
    reset();
}
