from nodesvc.vmm import x86

SUPPORTED = [
    {"function": 0x1, "index": 0, "flags": 0, "eax": 0x800F12, "ebx": 0x00000800, "ecx": 0x7ED8320B, "edx": 0x178BFBFF},
    {"function": 0xB, "index": 0, "flags": 1, "eax": 1, "ebx": 2, "ecx": 0x100, "edx": 7},
    {"function": 0xB, "index": 1, "flags": 1, "eax": 4, "ebx": 16, "ecx": 0x201, "edx": 7},
    {"function": 0xA, "index": 0, "flags": 0, "eax": 0x7300404, "ebx": 0, "ecx": 0, "edx": 0x603},
]


def _leaf(entries, fn, sub=0):
    return next(e for e in entries if e["function"] == fn and e["index"] == sub)


def test_cpuid_apic_ids_topology_and_hypervisor_bit():
    for idx in range(3):
        e = x86.build_cpuid(SUPPORTED, idx, 3)
        l1 = _leaf(e, 1)
        assert l1["ebx"] >> 24 == idx
        assert (l1["ebx"] >> 16) & 0xFF == 3
        assert l1["ecx"] & (1 << 31)
        assert l1["edx"] & (1 << 28)  # HTT: more than one logical CPU
        assert _leaf(e, 0xB, 0)["edx"] == idx
        assert _leaf(e, 0xB, 1)["ebx"] == 3
        assert _leaf(e, 0xB, 1)["eax"] == 2  # 3 CPUs need 2 bits of APIC id
        assert _leaf(e, 0xA) == {**_leaf(SUPPORTED, 0xA), "eax": 0, "ebx": 0, "ecx": 0, "edx": 0}


def test_single_cpu_has_no_htt():
    l1 = _leaf(x86.build_cpuid(SUPPORTED, 0, 1), 1)
    assert not l1["edx"] & (1 << 28)
    assert (l1["ebx"] >> 16) & 0xFF == 1


def test_supported_input_is_not_mutated():
    before = [dict(e) for e in SUPPORTED]
    x86.build_cpuid(SUPPORTED, 1, 2)
    assert SUPPORTED == before


def test_boot_segments_decode_to_long_mode_flat_segments():
    code = x86.segment_from_descriptor(x86.BOOT_GDT[1], x86.CODE_SEL)
    assert code["l"] == 1 and code["db"] == 0 and code["present"] == 1 and code["s"] == 1
    assert code["type"] == 0xB and code["limit"] == 0xFFFFFFFF and code["base"] == 0
    data = x86.segment_from_descriptor(x86.BOOT_GDT[2], x86.DATA_SEL)
    assert data["type"] == 0x3 and data["db"] == 1 and data["l"] == 0
    tss = x86.segment_from_descriptor(x86.BOOT_GDT[3], x86.TSS_SEL)
    assert tss["type"] == 0xB and tss["s"] == 0
    null = x86.segment_from_descriptor(0, 0)
    assert null["unusable"] == 1
