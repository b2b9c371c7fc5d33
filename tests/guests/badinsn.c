/*
 * badinsn: prints "ABOUT TO FAIL" and executes an instruction KVM's x86 emulator
 * cannot handle, so the VMM must stop with an emulation failure (KVM_EXIT_INTERNAL_ERROR,
 * suberror 1) naming the instruction bytes.
 *
 * Command line insn=<name> picks the instruction:
 *   popcnt (default)  popcnt (%rax),%rcx with %rax = 0xfe000000, an address in the
 *                     32-bit MMIO hole (mapped by the guest, backed by no memslot).
 *                     Bytes f3 48 0f b8 08. Fails on every KVM host: on bare metal
 *                     the MMIO access is emulated and the emulator has no popcnt;
 *                     on nested PVM all kernel code is emulated.
 *   popcntreg         popcnt %rax,%rcx (f3 48 0f b8 c8): fails only where kernel code
 *                     is emulated (nested PVM); native on bare metal.
 *   int3              int3 (cc): emulation failure on nested PVM; on bare metal a
 *                     #BP through the VMM's boot IDT (usually a triple fault).
 * If execution survives the instruction: "STILL ALIVE", "DONE", reset.
 */
#include "lib.h"

#define MMIO_HOLE_ADDR 0xfe000000ULL

void guest_main(u8 *zp)
{
    char insn[16];
    if (!cmdline_get(cmdline_of(zp), "insn", insn, sizeof(insn)))
        insn[0] = 0;
    if (strcmp(insn, "int3") == 0) {
        puts("ABOUT TO FAIL");
        __asm__ volatile("int3" ::: "memory");
    } else if (strcmp(insn, "popcntreg") == 0) {
        puts("ABOUT TO FAIL");
        u64 out = 0;
        /* .byte: gcc's default -march would accept the mnemonic, but spell the bytes out. */
        __asm__ volatile("mov $0x5, %%eax\n\t.byte 0xf3, 0x48, 0x0f, 0xb8, 0xc8" : "=c"(out) : : "rax", "memory");
        (void)out;
    } else {
        if (map_identity_2m_uc(MMIO_HOLE_ADDR) != 0)
            puts("MAP FAILED");
        puts("ABOUT TO FAIL");
        u64 out = 0;
        __asm__ volatile(".byte 0xf3, 0x48, 0x0f, 0xb8, 0x08" /* popcnt (%rax),%rcx */
                         : "=c"(out) : "a"(MMIO_HOLE_ADDR) : "memory");
        (void)out;
    }
    puts("STILL ALIVE");
    puts("DONE");
    reset();
}
