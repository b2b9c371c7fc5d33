/*
 * virtio_kick: drives the virtio-rng device at mmio=<base> (default 0xd0000000, the
 * VMM's first virtio-mmio window) like a minimal driver: feature negotiation with
 * VERSION_1 only, one 8-entry queue, DRIVER_OK, then `kicks=N` requests of 16 bytes,
 * each notified with a QUEUE_NOTIFY write and awaited on the used ring (polled, with
 * interrupts off). Prints "KICKS <done>" (or "FAIL <why>") and resets.
 *
 * It exists to show where queue notifications go: with ioeventfds registered at
 * attach, a QUEUE_NOTIFY write never leaves KVM, so the VMM sees N kicks served and
 * no MMIO exit for any of them.
 */
#include "lib.h"

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
#define R_STATUS 0x070
#define R_QUEUE_DESC 0x080
#define R_QUEUE_AVAIL 0x090
#define R_QUEUE_USED 0x0a0
#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define QSIZE 8
#define VIRTIO_ID_RNG 4

struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct avail { u16 flags; u16 idx; u16 ring[QSIZE]; u16 used_event; };
struct used_elem { u32 id; u32 len; };
struct used { u16 flags; u16 idx; struct used_elem ring[QSIZE]; u16 avail_event; };

static struct desc descs[QSIZE] __attribute__((aligned(16)));
static struct avail avail __attribute__((aligned(2)));
static struct used used __attribute__((aligned(4)));
static u8 buf[16];

static u64 base;

static void w(u32 off, u32 v) { mmio_write32(base + off, v); }
static u32 r(u32 off) { return mmio_read32(base + off); }
static void w64(u32 off, u64 v) { w(off, (u32)v); w(off + 4, (u32)(v >> 32)); }

NORETURN static void fail(const char *why)
{
    puts_raw("FAIL ");
    puts(why);
    reset();
}

void guest_main(u8 *zero_page)
{
    const char *cmdline = cmdline_of(zero_page);
    base = cmdline_get_u64(cmdline, "mmio", 0xd0000000ULL);
    u64 kicks = cmdline_get_u64(cmdline, "kicks", 32);
    if (map_identity_2m_uc(base) != 0)
        fail("page tables");
    if (r(R_MAGIC) != 0x74726976 || r(R_DEVICE_ID) != VIRTIO_ID_RNG)
        fail("no virtio-rng at mmio");
    w(R_STATUS, 0);
    w(R_STATUS, S_ACK | S_DRIVER);
    w(R_DEVICE_FEATURES_SEL, 1);
    if (!(r(R_DEVICE_FEATURES) & 1))
        fail("no VERSION_1");
    w(R_DRIVER_FEATURES_SEL, 0);
    w(R_DRIVER_FEATURES, 0);
    w(R_DRIVER_FEATURES_SEL, 1);
    w(R_DRIVER_FEATURES, 1);
    w(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    if (!(r(R_STATUS) & S_FEATURES_OK))
        fail("FEATURES_OK refused");
    w(R_QUEUE_SEL, 0);
    if (r(R_QUEUE_NUM_MAX) < QSIZE)
        fail("queue too small");
    w(R_QUEUE_NUM, QSIZE);
    w64(R_QUEUE_DESC, (u64)descs);
    w64(R_QUEUE_AVAIL, (u64)&avail);
    w64(R_QUEUE_USED, (u64)&used);
    w(R_QUEUE_READY, 1);
    w(R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);

    u64 done = 0;
    for (u64 i = 0; i < kicks; i++) {
        descs[0].addr = (u64)buf;
        descs[0].len = sizeof(buf);
        descs[0].flags = 2;     /* VIRTQ_DESC_F_WRITE */
        avail.ring[avail.idx % QSIZE] = 0;
        barrier();
        avail.idx++;
        barrier();
        w(R_QUEUE_NOTIFY, 0);
        u64 deadline = tsc_deadline_ms(2000);
        while (*(volatile u16 *)&used.idx != (u16)(i + 1)) {
            if (rdtsc() > deadline)
                fail("used ring did not advance");
            cpu_relax();
        }
        done++;
    }
    puts_raw("KICKS ");
    put_dec(done);
    puts_raw("\n");
    reset();
}
