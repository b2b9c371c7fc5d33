"""The AML encoder against the ACPI 6.5 encodings (section 20.2, resource descriptors 6.4)."""

import pytest

from nodesvc.vmm.boot import aml
from nodesvc.vmm.boot.aml import AmlError


# -- NameSeg / NameString (20.2.2) -------------------------------------------------
@pytest.mark.parametrize("seg,enc", [("_SB_", b"_SB_"), ("_SB", b"_SB_"), ("PS2", b"PS2_"),
                                     ("V", b"V___"), ("COM1", b"COM1"), ("_HID", b"_HID")])
def test_name_seg_is_four_chars_padded_with_underscores(seg, enc):
    assert aml.name_seg(seg) == enc


@pytest.mark.parametrize("bad", ["", "1ABC", "ABCDE", "ab", "A-B", "Ä"])
def test_name_seg_rejects_what_the_grammar_forbids(bad):
    with pytest.raises(AmlError):
        aml.name_seg(bad)


def test_name_strings_root_parent_dual_multi_null():
    assert aml.name_string("\\_SB_") == b"\x5c_SB_"
    assert aml.name_string("^^FOO") == b"\x5e\x5eFOO_"
    assert aml.name_string("_SB_.COM1") == b"\x2e_SB_COM1"                # DualNamePrefix
    assert aml.name_string("\\_SB_.PCI0.ISA_") == b"\x5c\x2f\x03_SB_PCI0ISA_"  # MultiName, 3
    assert aml.name_string("\\") == b"\x5c\x00"                          # root + NullName


# -- PkgLength (20.2.4) ------------------------------------------------------------
@pytest.mark.parametrize("body,enc", [
    (0, b"\x01"),                 # the length counts its own byte
    (62, b"\x3f"),                # 63: the largest one-byte form
    (63, b"\x41\x04"),            # 65 = 0x041 -> two bytes: lead 0b01 | low nibble 1, then 0x04
    (0xFFD, b"\x4f\xff"),         # 0xFFF: the largest two-byte form
    (0xFFE, b"\x81\x00\x01"),     # 0x1001 -> three bytes
    (0xFFFFC, b"\x8f\xff\xff"),   # 0xFFFFF: the largest three-byte form
    (0xFFFFD, b"\xc1\x00\x00\x01"),
    ((1 << 28) - 5, b"\xcf\xff\xff\xff"),
])
def test_pkg_length_forms(body, enc):
    got = aml.pkg_length(body)
    assert got == enc
    # decode the way an AML parser does and check the value covers itself + body
    lead = got[0]
    follow = lead >> 6
    value = lead & 0x3F if follow == 0 else (lead & 0x0F) | int.from_bytes(got[1:], "little") << 4
    assert len(got) == follow + 1 and value == body + len(got)
    if follow:
        assert lead & 0x30 == 0           # bits 5-4 reserved


def test_pkg_length_too_long():
    with pytest.raises(AmlError):
        aml.pkg_length(1 << 28)


# -- integers, strings, EISA ids ---------------------------------------------------
@pytest.mark.parametrize("value,enc", [
    (0, b"\x00"), (1, b"\x01"), ((1 << 64) - 1, b"\xff"),
    (2, b"\x0a\x02"), (0xFF, b"\x0a\xff"),
    (0x100, b"\x0b\x00\x01"), (0xFFFF, b"\x0b\xff\xff"),
    (0x10000, b"\x0c\x00\x00\x01\x00"), (0xD0000000, b"\x0c\x00\x00\x00\xd0"),
    (1 << 32, b"\x0e\x00\x00\x00\x00\x01\x00\x00\x00"),
])
def test_integer_uses_the_shortest_prefix(value, enc):
    assert aml.integer(value) == enc


@pytest.mark.parametrize("bad", [-1, 1 << 64, True, 1.0])
def test_integer_range(bad):
    with pytest.raises(AmlError):
        aml.integer(bad)


def test_string_is_prefixed_and_nul_terminated():
    assert aml.string("LNRO0005") == b"\x0dLNRO0005\x00"
    assert aml.string("") == b"\x0d\x00"
    with pytest.raises(AmlError):
        aml.string("a\0b")


def test_eisa_id_matches_acpica():
    # ACPICA's EISAID("PNP0501") is 0x0105D041, EISAID("PNP0303") 0x0303D041
    assert aml.eisa_id("PNP0501") == b"\x0c" + (0x0105D041).to_bytes(4, "little")
    assert aml.eisa_id("PNP0303") == b"\x0c" + (0x0303D041).to_bytes(4, "little")
    with pytest.raises(AmlError):
        aml.eisa_id("pnp0501")


# -- buffers, packages, named objects ----------------------------------------------
def test_buffer_and_package():
    assert aml.buffer(b"\x01\x02\x03") == b"\x11\x06\x0a\x03\x01\x02\x03"
    assert aml.buffer(b"") == b"\x11\x02\x00"
    assert aml.package(aml.integer(1), aml.string("A")) == b"\x12\x06\x02\x01\x0dA\x00"
    big = aml.buffer(bytes(100))  # 2 + 100 bytes of body: PkgLength 104 = 0x068, two bytes
    assert big[:5] == b"\x11\x48\x06\x0a\x64" and len(big) == 1 + 2 + 2 + 100


def test_name_scope_device():
    assert aml.name("_UID", aml.integer(0)) == b"\x08_UID\x00"
    dev = aml.device("COM1", aml.name("_UID", aml.integer(0)))
    assert dev == b"\x5b\x82\x0b" + b"COM1" + b"\x08_UID\x00"
    sc = aml.scope("\\_SB_", dev)
    assert sc == b"\x10" + bytes([1 + 5 + len(dev)]) + b"\x5c_SB_" + dev


# -- resource descriptors (6.4) ----------------------------------------------------
def test_io_port_descriptor():
    assert aml.io_port(0x3F8, 8) == b"\x47\x01\xf8\x03\xf8\x03\x01\x08"


def test_memory32_fixed_descriptor():
    assert aml.memory32_fixed(0xD0000000, 0x1000) == (
        b"\x86\x09\x00\x01" + b"\x00\x00\x00\xd0" + b"\x00\x10\x00\x00")
    assert aml.memory32_fixed(0xFEC00000, 0x1000, writable=False)[3] == 0
    with pytest.raises(AmlError):
        aml.memory32_fixed(0xFFFFF000, 0x2000)


def test_extended_interrupt_descriptor():
    # consumer, edge, active high, exclusive: flags 0b0011
    assert aml.interrupt(5) == b"\x89\x06\x00\x03\x01\x05\x00\x00\x00"
    lvl = aml.interrupt(9, 10, edge=False, active_low=True, shared=True)
    assert lvl == b"\x89\x0a\x00\x0d\x02" + b"\x09\x00\x00\x00\x0a\x00\x00\x00"
    with pytest.raises(AmlError):
        aml.interrupt()


def test_resource_template_ends_with_end_tag():
    rt = aml.resource_template(aml.interrupt(4))
    assert rt[0] == aml.BUFFER_OP and rt.endswith(b"\x79\x00")
    assert rt[2:4] == b"\x0a\x0b"          # BufferSize = 9 + 2
