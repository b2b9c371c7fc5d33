/*
 * poke: prints "POKE READY", then writes every byte received on COM1 to port
 * `port=<p>` (default 0x5f0, the test-only hostile device of tests/security) and
 * prints "POKED <byte>" after the write returns. On 'q': "BYE" and reset.
 * Bounded like echo: after idle=<ms> without input (default 60000) it prints
 * "TIMEOUT" and resets.
 */
#include "lib.h"

void guest_main(u8 *zp)
{
    const char *cmdline = cmdline_of(zp);
    u16 port = (u16)cmdline_get_u64(cmdline, "port", 0x5f0);
    u64 idle = cmdline_get_u64(cmdline, "idle", 60000) * (tsc_hz() / 1000);
    puts("POKE READY");
    for (u64 deadline = rdtsc() + idle; rdtsc() < deadline;) {
        int c = serial_getc_nowait();
        if (c < 0) {
            delay(200); /* idle VMs share the host's CPUs with the test */
            continue;
        }
        deadline = rdtsc() + idle;
        if (c == 'q') {
            puts("BYE");
            reset();
        }
        outb(port, (u8)c);
        puts_raw("POKED ");
        serial_putc((char)c);
        serial_putc('\n');
    }
    puts("TIMEOUT");
    reset();
}
