/* Shared between smp.c and trampoline.S. */
#ifndef TINY_GUEST_SMP_H
#define TINY_GUEST_SMP_H

/*
 * Trampoline page: below 1 MiB, page aligned, clear of the VMM's boot layout
 * (GDT 0x500, zero page 0x7000, boot stack page 0x8000-0x8fff, page tables
 * 0x9000-0xbfff, cmdline 0x20000, MPTable 0x9fc00). SIPI vector 0x06.
 */
#define TRAMP_BASE 0x6000
#define MAX_APS 63
#define AP_STACK_SHIFT 12 /* 4 KiB per AP */

#endif
