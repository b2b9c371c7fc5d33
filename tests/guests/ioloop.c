/*
 * ioloop: a PIO exit benchmark. Does count=<n> (default 10000) 1-byte port
 * accesses to port=<p> (default 0x510, which a microVM VMM leaves unhandled:
 * every access is a full exit to user space), outb by default or inb with op=in.
 * Output:
 *   IOLOOP <count> <port hex> <out|in>
 *   TSC <rdtsc delta over the loop>
 *   DONE
 * then resets.
 */
#include "lib.h"

void guest_main(u8 *zp)
{
    const char *cl = cmdline_of(zp);
    u64 count = cmdline_get_u64(cl, "count", 10000);
    u16 port = (u16)cmdline_get_u64(cl, "port", 0x510);
    char op[4];
    int in = cmdline_get(cl, "op", op, sizeof(op)) && strcmp(op, "in") == 0;

    puts_raw("IOLOOP ");
    put_dec(count);
    serial_putc(' ');
    put_hex(port);
    puts(in ? " in" : " out");
    u64 t0 = rdtsc();
    if (in) {
        for (u64 i = 0; i < count; i++)
            (void)inb(port);
    } else {
        for (u64 i = 0; i < count; i++)
            outb(port, (u8)i);
    }
    u64 t1 = rdtsc();
    puts_raw("TSC ");
    put_dec(t1 - t0);
    serial_putc('\n');
    puts("DONE");
    reset();
}
