/*
 * AP start-up trampoline for smp.c. The BSP copies [ap_tramp_start, ap_tramp_end)
 * to TRAMP_BASE (a page below 1 MiB; SIPI vector = TRAMP_BASE >> 12), fills in the
 * data block at its end, and sends INIT-SIPI-SIPI. An AP starts in real mode at
 * CS:IP = (vector << 8):0000 and goes
 *   real mode -> 32-bit protected mode (own GDT, flat) -> PAE + CR3 (the BSP's
 *   page tables) + EFER.LME + CR0.PG -> 64-bit long mode (CS 0x08, data 0x10)
 * then takes a slot number with lock xadd, switches to stack[slot] and calls
 * tr_entry(slot). Only plain instructions the KVM emulator handles are used.
 */
#include "smp.h"

#define REL(x) (TRAMP_BASE + ((x) - ap_tramp_start))

    .section .rodata.trampoline, "a", @progbits
    .globl ap_tramp_start, ap_tramp_end
    .globl tr_cr3, tr_entry, tr_stack_base, tr_count

    .code16
    .balign 16
ap_tramp_start:
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (tr_gdtr - ap_tramp_start)    /* DS base = TRAMP_BASE */
    movl $0x00000031, %eax              /* PE | ET | NE; clears CD/NW left by INIT */
    movl %eax, %cr0
    ljmpl $0x18, $REL(tr_pm32)

    .code32
tr_pm32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl %cr4, %eax
    orl $0x20, %eax                     /* PAE */
    movl %eax, %cr4
    movl REL(tr_cr3), %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx              /* EFER */
    rdmsr
    orl $0x100, %eax                    /* LME */
    wrmsr
    movl $0x80000031, %eax              /* PG | NE | ET | PE (clears CD/NW left by INIT) */
    movl %eax, %cr0
    ljmpl $0x08, $REL(tr_lm64)

    .code64
tr_lm64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl $1, %eax
    lock xaddl %eax, REL(tr_count)      /* eax = this AP's slot */
    cmpl $MAX_APS, %eax
    jae 2f                              /* more APs than stacks: park */
    movl %eax, %edi                     /* arg 1: slot */
    incl %eax
    shlq $AP_STACK_SHIFT, %rax
    addq REL(tr_stack_base), %rax
    movq %rax, %rsp                     /* top of stack[slot], 16-byte aligned */
    xorl %ebp, %ebp
    movq REL(tr_entry), %rax
    call *%rax
2:  cli
    hlt
    jmp 2b

    .balign 8
tr_gdt:
    .quad 0                             /* 0x00 null */
    .quad 0x00af9a000000ffff            /* 0x08 64-bit code */
    .quad 0x00cf92000000ffff            /* 0x10 flat data */
    .quad 0x00cf9a000000ffff            /* 0x18 flat 32-bit code */
tr_gdt_end:
tr_gdtr:
    .word tr_gdt_end - tr_gdt - 1
    .long REL(tr_gdt)
    .balign 8
tr_cr3:         .quad 0                 /* filled by the BSP: its CR3 */
tr_entry:       .quad 0                 /* filled by the BSP: void ap_main(u32 slot) */
tr_stack_base:  .quad 0                 /* filled by the BSP: MAX_APS stacks of 1 << AP_STACK_SHIFT */
tr_count:       .long 0                 /* APs that reached long mode (slot allocator) */
    .balign 8
ap_tramp_end:

    .section .note.GNU-stack, "", @progbits
