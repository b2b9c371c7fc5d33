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


def test_topology_leaf_gets_all_subleaves_even_when_host_has_one():
    host = [{"function": 0xB, "index": 0, "flags": 1, "eax": 0, "ebx": 0, "ecx": 0, "edx": 0}]
    e = x86.build_cpuid(host, 1, 2)
    subs = [x for x in e if x["function"] == 0xB]
    assert [x["index"] for x in subs] == [0, 1, 2]
    assert [(x["ecx"] >> 8) & 0xFF for x in subs] == [1, 2, 0]   # SMT, core, invalid
    assert subs[1]["ebx"] == 2 and subs[1]["eax"] == 1
    assert all(x["edx"] == 1 for x in subs)


def test_amd_topology_leaves():
    host = [{"function": 0x80000008, "index": 0, "flags": 0, "eax": 0x3030, "ebx": 0, "ecx": 0x7001, "edx": 0},
            {"function": 0x8000001E, "index": 0, "flags": 0, "eax": 0, "ebx": 0, "ecx": 0, "edx": 0}]
    e = x86.build_cpuid(host, 3, 4)
    assert _leaf(e, 0x80000008)["ecx"] == (2 << 12) | 3
    assert _leaf(e, 0x8000001E)["eax"] == 3
