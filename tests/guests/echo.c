/*
 * echo: prints "READY", then echoes every byte received on COM1 (polls LSR bit 0,
 * reads RBR). On 'q' (echoed too) it prints "\nBYE" and resets.
 * Output for input "abq": "READY\nabq\nBYE\n".
 * Bounded: after idle=<ms> without input (default 30000; TSC-based, approximate)
 * it prints "\nTIMEOUT" and resets, so a test that never types still ends.
 */
#include "lib.h"

void guest_main(u8 *zp)
{
    u64 idle = cmdline_get_u64(cmdline_of(zp), "idle", 30000) * (tsc_hz() / 1000);
    puts("READY");
    for (u64 deadline = rdtsc() + idle; rdtsc() < deadline;) {
        int c = serial_getc_nowait();
        if (c < 0) {
            delay(20); /* fewer exits while idle */
            continue;
        }
        deadline = rdtsc() + idle;
        serial_putc((char)c);
        if (c == 'q') {
            puts_raw("\nBYE\n");
            reset();
        }
    }
    puts_raw("\nTIMEOUT\n");
    reset();
}
