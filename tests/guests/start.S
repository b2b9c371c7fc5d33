/*
 * Entry of every tiny guest. The VMM enters here in 64-bit long mode
 * (CS=0x08, data=0x10, identity map of the first 1 GiB, RSI = zero page,
 * RSP = 0x8ff0, interrupts off). We switch to a private 16 KiB stack (the
 * boot stack page sits right above the zero page), zero .bss while noting
 * whether the loader had left it zero, and call guest_main(zero_page).
 */
#define BOOT_STACK_SIZE 16384

    .section .text.start, "ax", @progbits
    .code64
    .globl _start
_start:
    cli
    cld
    movq $boot_stack_top, %rsp      /* sign-extended imm32: the image lives below 2 GiB */
    xorl %ebp, %ebp
    movq %rsi, %rbx                 /* zero page pointer (callee-saved) */
    movq $__bss_start, %rdi
    movq $__bss_end, %rcx
    xorl %edx, %edx
1:  cmpq %rcx, %rdi
    jae 2f
    orq (%rdi), %rdx
    movq $0, (%rdi)
    addq $8, %rdi
    jmp 1b
2:  movq %rdx, boot_bss_dirty       /* in .data, so not wiped by the loop */
    movq %rbx, %rdi
    call guest_main
    call reset                      /* guest_main returned: end like every guest does */
3:  cli
    hlt
    jmp 3b

    .section .data, "aw", @progbits
    .balign 8
    .globl boot_bss_dirty
boot_bss_dirty:
    .quad 0                         /* OR of every .bss word as the loader left it */

    /* 256 bytes of .bss right after .data: a loader that copies file bytes past
     * p_filesz (the symbol table follows .data in the file) leaves them non-zero. */
    .section .bss.probe, "aw", @nobits   /* KEEP()ed by link.ld despite --gc-sections */
    .balign 8
bss_probe:
    .skip 256

    .section .noinit, "aw", @nobits
    .balign 4096
boot_stack:
    .skip BOOT_STACK_SIZE
boot_stack_top:

    .section .note.GNU-stack, "", @progbits
