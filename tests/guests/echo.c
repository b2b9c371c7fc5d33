/*
 * echo: prints "READY", then echoes every byte received on COM1 (polls LSR bit 0,
 * reads RBR). On 'q' (echoed too) it prints "\nBYE" and resets.
 * Output for input "abq": "READY\nabq\nBYE\n".
 * Bounded: after idle=<polls> consecutive empty polls (default 2000000) it prints
 * "\nTIMEOUT" and resets, so a test that never types still ends.
 */
#include "lib.h"

void guest_main(u8 *zp)
{
    u64 idle_max = cmdline_get_u64(cmdline_of(zp), "idle", 2000000);
    puts("READY");
    for (u64 idle = 0; idle < idle_max;) {
        int c = serial_getc_nowait();
        if (c < 0) {
            idle++;
            delay(20); /* fewer exits while idle */
            continue;
        }
        idle = 0;
        serial_putc((char)c);
        if (c == 'q') {
            puts_raw("\nBYE\n");
            reset();
        }
    }
    puts_raw("\nTIMEOUT\n");
    reset();
}
