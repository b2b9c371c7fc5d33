import pytest

from nodesvc.vmm.bus import Bus, BusConflict


class Reg:
    def __init__(self):
        self.writes = []

    def read(self, offset, size):
        return offset + 0x100

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))


def test_dispatch_by_range_with_relative_offsets():
    bus, a, b = Bus("pio"), Reg(), Reg()
    bus.insert(0x3F8, 8, a)
    bus.insert(0x60, 1, b)
    assert bus.read(0x3FD, 1) == 0x105
    bus.write(0x60, 1, 0xFE)
    assert b.writes == [(0, 1, 0xFE)]
    assert bus.find(0x400) is None


def test_unhandled_reads_float_high_and_are_counted():
    bus = Bus("pio")
    assert bus.read(0x80, 1) == 0xFF
    assert bus.read(0x80, 4) == 0xFFFFFFFF
    bus.write(0x80, 1, 1)
    assert (bus.unhandled_reads, bus.unhandled_writes) == (2, 1)


@pytest.mark.parametrize("base,length", [(0x3F8, 1), (0x3F0, 9), (0x3FF, 4)])
def test_overlaps_are_refused(base, length):
    bus = Bus("pio")
    bus.insert(0x3F8, 8, Reg())
    with pytest.raises(BusConflict):
        bus.insert(base, length, Reg())


def test_adjacent_ranges_are_fine():
    bus = Bus("mmio")
    bus.insert(0xD0000000, 0x1000, Reg())
    bus.insert(0xD0001000, 0x1000, Reg())
    assert len(bus.devices()) == 2
