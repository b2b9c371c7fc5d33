/*
 * triple: prints "TRIPLE", loads an IDT with limit 0 and divides by zero:
 * #DE cannot be delivered (vector outside the IDT) -> #GP -> #DF -> shutdown,
 * i.e. KVM_EXIT_SHUTDOWN, which the VMM reports as a triple fault.
 * (Divide error rather than ud2: the emulator implements div and raises #DE
 * itself, whereas an unknown opcode could surface as an emulation failure.)
 * Should the CPU survive anyway: "STILL ALIVE", "DONE", reset.
 */
#include "lib.h"

void guest_main(u8 *zp)
{
    (void)zp;
    struct __attribute__((packed)) {
        u16 limit;
        u64 base;
    } idtr = {0, 0};
    puts("TRIPLE");
    __asm__ volatile("lidt %0" : : "m"(idtr));
    u32 zero = 0;
    __asm__ volatile("xor %%edx, %%edx\n\tmov $1, %%eax\n\tdivl %0" : : "r"(zero) : "rax", "rdx", "memory");
    puts("STILL ALIVE");
    puts("DONE");
    reset();
}
