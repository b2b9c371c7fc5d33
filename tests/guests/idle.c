/*
 * idle: prints "IDLE" and halts with interrupts off, so the vCPU sleeps in KVM and
 * costs no host CPU. Used where a VM must stay RUNNING (node-service tests, RSS
 * benchmarks); it ends only when the VMM stops it.
 */
#include "lib.h"

void guest_main(u8 *zero_page)
{
    (void)zero_page;
    puts("IDLE");
    halt_forever();
}
