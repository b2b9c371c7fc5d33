/*
 * bootinfo: reports what the VMM's loader put in the zero page. Output:
 *   ZEROPAGE 0x7000                         (the RSI the guest was entered with)
 *   CMDLINE <kernel command line>           (verbatim, up to 4096 bytes)
 *   E820 <n>                                (boot_params.e820_entries)
 *   E820 <addr> <size> <type>               (one per entry, hex with 0x, type decimal)
 *   INITRD <addr> <size>                    (ramdisk_image/ramdisk_size, 0x0 0x0 if none)
 *   INITRD_SUM <fnv1a32>                    (only for 0 < size <= 64 KiB: FNV-1a 32 of the bytes)
 *   LOADER DATA <ok|bad> BSS <ok|dirty>     (data PT_LOAD copied, .bss zero as loaded)
 *   DONE
 * then resets.
 */
#include "lib.h"

#define CMDLINE_MAX 4096
#define INITRD_SUM_MAX (64 * 1024)

void guest_main(u8 *zp)
{
    puts_raw("ZEROPAGE ");
    put_hex((u64)(usize)zp);
    serial_putc('\n');

    const char *cl = cmdline_of(zp);
    puts_raw("CMDLINE ");
    for (int i = 0; i < CMDLINE_MAX && cl[i]; i++)
        serial_putc(cl[i]);
    serial_putc('\n');

    u32 n = bp_u8(zp, BP_E820_ENTRIES);
    puts_raw("E820 ");
    put_dec(n);
    serial_putc('\n');
    if (n > BP_E820_MAX)
        n = BP_E820_MAX;
    for (u32 i = 0; i < n; i++) {
        u32 off = BP_E820_TABLE + i * 20;
        puts_raw("E820 ");
        put_hex(bp_u64(zp, off));
        serial_putc(' ');
        put_hex(bp_u64(zp, off + 8));
        serial_putc(' ');
        put_dec(bp_u32(zp, off + 16));
        serial_putc('\n');
    }

    u32 rd = bp_u32(zp, BP_RAMDISK_IMAGE), rs = bp_u32(zp, BP_RAMDISK_SIZE);
    puts_raw("INITRD ");
    put_hex(rd);
    serial_putc(' ');
    put_hex(rs);
    serial_putc('\n');
    if (rs && rs <= INITRD_SUM_MAX) {
        const u8 *p = (const u8 *)(usize)rd;
        u32 h = 2166136261u;
        for (u32 i = 0; i < rs; i++)
            h = (h ^ p[i]) * 16777619u;
        puts_raw("INITRD_SUM ");
        put_hex(h);
        serial_putc('\n');
    }

    puts_raw("LOADER DATA ");
    puts_raw(lib_data_magic == LIB_DATA_MAGIC ? "ok" : "bad");
    puts_raw(" BSS ");
    puts(boot_bss_dirty ? "dirty" : "ok");

    puts("DONE");
    reset();
}
