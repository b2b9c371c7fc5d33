/*
 * hello: prints one line and resets. Expected output: "HELLO FROM TINY GUEST\n".
 * With `boottimer=1` on the command line it first writes Firecracker's boot-complete
 * magic (123) to the boot-timer device at 0xc0000000, as a guest's init would.
 */
#include "lib.h"

#define BOOT_TIMER_ADDR 0xc0000000ull
#define BOOT_TIMER_MAGIC 123

void guest_main(u8 *zero_page)
{
    if (cmdline_get_u64(cmdline_of(zero_page), "boottimer", 0)) {
        if (map_identity_2m_uc(BOOT_TIMER_ADDR) == 0)
            *(volatile u8 *)BOOT_TIMER_ADDR = BOOT_TIMER_MAGIC;
        else
            puts("BOOTTIMER MAP FAILED");
    }
    puts("HELLO FROM TINY GUEST");
    reset();
}
