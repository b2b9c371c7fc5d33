"""C layouts of the x86 boot ABI, declared once for cffi (ABI mode, no compiler needed).

Sources: Linux arch/x86/include/uapi/asm/bootparam.h (+ screen_info.h, apm_bios.h,
ist.h, edid.h, edd.h), arch/x86/include/asm/mpspec_def.h (Intel MP spec 1.4) and
the System V ELF-64 ABI (<elf.h>). Offsets are never written by hand: cffi lays the
structs out, tests/unit/test_boot_abi.py checks them against the documented offsets
(and against gcc + the system headers when available).

Structs the kernel marks __attribute__((packed)) are declared in a `packed=True`
cdef; the others are naturally aligned and declared normally.
"""

from __future__ import annotations

from ..cffi_cache import load

E820_MAX_ENTRIES_ZEROPAGE = 128   # bootparam.h
EDD_MBR_SIG_MAX = 16              # edd.h
EDDMAXNR = 6                      # edd.h


def _declare(ffi) -> None:
    # --- bootparam.h: naturally aligned members of struct boot_params -------------
    ffi.cdef("""
    struct apm_bios_info {
        uint16_t version; uint16_t cseg; uint32_t offset; uint16_t cseg_16; uint16_t dseg;
        uint16_t flags; uint16_t cseg_len; uint16_t cseg_16_len; uint16_t dseg_len;
    };
    struct ist_info { uint32_t signature; uint32_t command; uint32_t event; uint32_t perf_level; };
    struct sys_desc_table { uint16_t length; uint8_t table[14]; };
    struct efi_info {
        uint32_t efi_loader_signature; uint32_t efi_systab; uint32_t efi_memdesc_size;
        uint32_t efi_memdesc_version; uint32_t efi_memmap; uint32_t efi_memmap_size;
        uint32_t efi_systab_hi; uint32_t efi_memmap_hi;
    };
    struct edid_info { unsigned char dummy[128]; };

    /* extensible setup data list node; data[] follows the header */
    struct setup_data { uint64_t next; uint32_t type; uint32_t len; };
    """)

    # --- bootparam.h: the packed structs ------------------------------------------
    ffi.cdef("""
    struct screen_info {
        uint8_t orig_x; uint8_t orig_y; uint16_t ext_mem_k; uint16_t orig_video_page;
        uint8_t orig_video_mode; uint8_t orig_video_cols; uint8_t flags; uint8_t unused2;
        uint16_t orig_video_ega_bx; uint16_t unused3; uint8_t orig_video_lines;
        uint8_t orig_video_isVGA; uint16_t orig_video_points;
        uint16_t lfb_width; uint16_t lfb_height; uint16_t lfb_depth; uint32_t lfb_base;
        uint32_t lfb_size; uint16_t cl_magic; uint16_t cl_offset; uint16_t lfb_linelength;
        uint8_t red_size; uint8_t red_pos; uint8_t green_size; uint8_t green_pos;
        uint8_t blue_size; uint8_t blue_pos; uint8_t rsvd_size; uint8_t rsvd_pos;
        uint16_t vesapm_seg; uint16_t vesapm_off; uint16_t pages; uint16_t vesa_attributes;
        uint32_t capabilities; uint8_t _reserved[6];
    };
    struct olpc_ofw_header {
        uint32_t ofw_magic; uint32_t ofw_version; uint32_t cif_handler; uint32_t irq_desc_table;
    };
    struct edd_device_params {
        uint16_t length; uint16_t info_flags; uint32_t num_default_cylinders;
        uint32_t num_default_heads; uint32_t sectors_per_track; uint64_t number_of_sectors;
        uint16_t bytes_per_sector; uint32_t dpte_ptr; uint16_t key;
        uint8_t device_path_info_length; uint8_t reserved2; uint16_t reserved3;
        uint8_t host_bus_type[4]; uint8_t interface_type[8];
        uint8_t interface_path[8];   /* union of 8-byte bus-specific variants (unused here) */
        uint8_t device_path[16];     /* union of 16-byte device variants (unused here) */
        uint8_t reserved4; uint8_t checksum;
    };
    struct edd_info {
        uint8_t device; uint8_t version; uint16_t interface_support;
        uint16_t legacy_max_cylinder; uint8_t legacy_max_head; uint8_t legacy_sectors_per_track;
        struct edd_device_params params;
    };
    struct boot_e820_entry { uint64_t addr; uint64_t size; uint32_t type; };
    struct setup_header {
        uint8_t  setup_sects;     uint16_t root_flags;      uint32_t syssize;
        uint16_t ram_size;        uint16_t vid_mode;        uint16_t root_dev;
        uint16_t boot_flag;       uint16_t jump;            uint32_t header;
        uint16_t version;         uint32_t realmode_swtch;  uint16_t start_sys_seg;
        uint16_t kernel_version;  uint8_t  type_of_loader;  uint8_t  loadflags;
        uint16_t setup_move_size; uint32_t code32_start;    uint32_t ramdisk_image;
        uint32_t ramdisk_size;    uint32_t bootsect_kludge; uint16_t heap_end_ptr;
        uint8_t  ext_loader_ver;  uint8_t  ext_loader_type; uint32_t cmd_line_ptr;
        uint32_t initrd_addr_max; uint32_t kernel_alignment; uint8_t relocatable_kernel;
        uint8_t  min_alignment;   uint16_t xloadflags;      uint32_t cmdline_size;
        uint32_t hardware_subarch; uint64_t hardware_subarch_data;
        uint32_t payload_offset;  uint32_t payload_length;  uint64_t setup_data;
        uint64_t pref_address;    uint32_t init_size;       uint32_t handover_offset;
        uint32_t kernel_info_offset;
    };
    """, packed=True)

    # bootparam.h sizes _pad7 with this very expression: hdr must end before 0x290.
    _PAD7 = 0x290 - 0x1F1 - ffi.sizeof("struct setup_header")

    # The zero page. Field order and pad sizes follow bootparam.h verbatim.
    ffi.cdef(f"""
    struct boot_params {{
        struct screen_info screen_info;
        struct apm_bios_info apm_bios_info;
        uint8_t  _pad2[4];
        uint64_t tboot_addr;
        struct ist_info ist_info;
        uint64_t acpi_rsdp_addr;
        uint8_t  _pad3[8];
        uint8_t  hd0_info[16];
        uint8_t  hd1_info[16];
        struct sys_desc_table sys_desc_table;
        struct olpc_ofw_header olpc_ofw_header;
        uint32_t ext_ramdisk_image;
        uint32_t ext_ramdisk_size;
        uint32_t ext_cmd_line_ptr;
        uint8_t  _pad4[116];
        struct edid_info edid_info;
        struct efi_info efi_info;
        uint32_t alt_mem_k;
        uint32_t scratch;
        uint8_t  e820_entries;
        uint8_t  eddbuf_entries;
        uint8_t  edd_mbr_sig_buf_entries;
        uint8_t  kbd_status;
        uint8_t  secure_boot;
        uint8_t  _pad5[2];
        uint8_t  sentinel;
        uint8_t  _pad6[1];
        struct setup_header hdr;
        uint8_t  _pad7[{_PAD7}];
        uint32_t edd_mbr_sig_buffer[{EDD_MBR_SIG_MAX}];
        struct boot_e820_entry e820_table[{E820_MAX_ENTRIES_ZEROPAGE}];
        uint8_t  _pad8[48];
        struct edd_info eddbuf[{EDDMAXNR}];
        uint8_t  _pad9[276];
    }};
    """, packed=True)

    # --- mpspec_def.h (Intel MP spec 1.4); all naturally aligned ------------------
    ffi.cdef("""
    struct mpf_intel {
        char signature[4]; uint32_t physptr; uint8_t length; uint8_t specification;
        uint8_t checksum; uint8_t feature1; uint8_t feature2; uint8_t feature3;
        uint8_t feature4; uint8_t feature5;
    };
    struct mpc_table {
        char signature[4]; uint16_t length; uint8_t spec; uint8_t checksum;
        char oem[8]; char productid[12]; uint32_t oemptr; uint16_t oemsize;
        uint16_t oemcount; uint32_t lapic; uint32_t reserved;
    };
    struct mpc_cpu {
        uint8_t type; uint8_t apicid; uint8_t apicver; uint8_t cpuflag;
        uint32_t cpufeature; uint32_t featureflag; uint32_t reserved[2];
    };
    struct mpc_bus { uint8_t type; uint8_t busid; char bustype[6]; };
    struct mpc_ioapic {
        uint8_t type; uint8_t apicid; uint8_t apicver; uint8_t flags; uint32_t apicaddr;
    };
    struct mpc_intsrc {
        uint8_t type; uint8_t irqtype; uint16_t irqflag; uint8_t srcbus;
        uint8_t srcbusirq; uint8_t dstapic; uint8_t dstirq;
    };
    struct mpc_lintsrc {
        uint8_t type; uint8_t irqtype; uint16_t irqflag; uint8_t srcbusid;
        uint8_t srcbusirq; uint8_t destapic; uint8_t destapiclint;
    };
    """)

    # --- ELF-64 (System V gABI / <elf.h>) -----------------------------------------
    ffi.cdef("""
    typedef struct {
        unsigned char e_ident[16]; uint16_t e_type; uint16_t e_machine; uint32_t e_version;
        uint64_t e_entry; uint64_t e_phoff; uint64_t e_shoff; uint32_t e_flags;
        uint16_t e_ehsize; uint16_t e_phentsize; uint16_t e_phnum;
        uint16_t e_shentsize; uint16_t e_shnum; uint16_t e_shstrndx;
    } Elf64_Ehdr;
    typedef struct {
        uint32_t p_type; uint32_t p_flags; uint64_t p_offset; uint64_t p_vaddr;
        uint64_t p_paddr; uint64_t p_filesz; uint64_t p_memsz; uint64_t p_align;
    } Elf64_Phdr;
    typedef struct { uint32_t n_namesz; uint32_t n_descsz; uint32_t n_type; } Elf64_Nhdr;
    """)


ffi = load(__name__, __file__, _declare)


def sizeof(ctype: str) -> int:
    return ffi.sizeof(ctype)


def offsetof(ctype: str, *fields: str) -> int:
    return ffi.offsetof(ctype, *fields)


def unpack(ctype: str, data, offset: int = 0):
    """A new, owned `ctype` filled from `data[offset:offset+sizeof]` (short data: ValueError)."""
    size = ffi.sizeof(ctype)
    chunk = bytes(data[offset:offset + size])
    if len(chunk) != size:
        raise ValueError(f"{ctype} needs {size} bytes at offset {offset:#x}, got {len(chunk)}")
    obj = ffi.new(ctype + " *")
    ffi.memmove(obj, chunk, size)
    return obj


def pack(obj) -> bytes:
    """The raw bytes of a cffi struct (pointer or array)."""
    return bytes(ffi.buffer(obj))
