"""Register maps and the pure decoder, against hand-encoded register words (field-notes.md §5)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hal.interfaces import MeterError, MeterReading
from hal.modbus.registers import (
    ABB_B23,
    EM340,
    MAPS,
    SDM72,
    SDM120,
    SDM630,
    Block,
    decode,
    encode,
    register_map,
)

# Eastron: float32, high word first. 230.0 = 0x4366_0000, 231.5 = 0x4367_8000, 229.0 = 0x4365_0000,
# 16.0 = 0x4180_0000, 8.5 = 0x4108_0000, 5635.5 = 0x45B0_1C00, 1234.5 kWh = 0x449A_5000.
SDM630_REGISTERS = {
    0x0000: 0x4366, 0x0001: 0x0000, 0x0002: 0x4367, 0x0003: 0x8000, 0x0004: 0x4365, 0x0005: 0x0000,
    0x0006: 0x4180, 0x0007: 0x0000, 0x0008: 0x4108, 0x0009: 0x0000, 0x000A: 0x0000, 0x000B: 0x0000,
    0x0034: 0x45B0, 0x0035: 0x1C00,
    0x0048: 0x449A, 0x0049: 0x5000,
}


def test_sdm630_decodes_float32_high_word_first() -> None:
    reading = decode(SDM630, SDM630_REGISTERS)
    assert reading == MeterReading(energy_wh=1234500.0, power_w=5635.5, current_a=(16.0, 8.5, 0.0),
                                   voltage_v=(230.0, 231.5, 229.0))


def test_sdm72_uses_the_sdm630_v2_map() -> None:
    assert decode(SDM72, SDM630_REGISTERS) == decode(SDM630, SDM630_REGISTERS)
    assert SDM72.function == 0x04


def test_sdm630_is_read_in_three_blocks() -> None:
    assert SDM630.blocks == (Block(0x0000, 12), Block(0x0034, 2), Block(0x0048, 2))
    assert SDM630.function == 0x04  # input registers


def test_sdm120_single_phase() -> None:
    regs = {0x0000: 0x4366, 0x0001: 0, 0x0006: 0x4180, 0x0007: 0, 0x000C: 0x45B0, 0x000D: 0x1C00,
            0x0048: 0x449A, 0x0049: 0x5000}
    reading = decode(SDM120, regs)
    assert reading.voltage_v == (230.0,)
    assert reading.current_a == (16.0,)
    assert reading.power_w == 5635.5
    assert reading.energy_wh == 1234500.0


def test_abb_b23_decodes_scaled_integers_from_holding_registers() -> None:
    regs = {address: 0 for block in ABB_B23.blocks for address in range(block.address, block.address + block.count)}
    regs.update({
        0x5B00: 0x0000, 0x5B01: 2301,        # U32 0.1 V -> 230.1 V
        0x5B02: 0x0000, 0x5B03: 2299,
        0x5B04: 0x0000, 0x5B05: 2310,
        0x5B0C: 0x0000, 0x5B0D: 1600,        # U32 0.01 A -> 16 A
        0x5B0E: 0x0001, 0x5B0F: 0x0000,      # 65536 x 0.01 A = 655.36 A: the high word is the high word
        0x5B10: 0x0000, 0x5B11: 0,
        0x5B14: 0xFFFF, 0x5B15: 0xFC18,      # S32 -1000 x 0.01 W = -10 W (exporting)
        0x5000: 0x0000, 0x5001: 0x0000, 0x5002: 0x0001, 0x5003: 0x0002,  # U64 65538 x 0.01 kWh
    })
    reading = decode(ABB_B23, regs)
    assert ABB_B23.function == 0x03
    assert reading.voltage_v == (230.1, 229.9, 231.0)
    assert reading.current_a == (16.0, 655.36, 0.0)
    assert reading.power_w == -10.0
    assert reading.energy_wh == 655380.0
    assert ABB_B23.blocks == (Block(0x5000, 4), Block(0x5B00, 22))


def test_em340_decodes_int32_low_word_first() -> None:
    regs = {address: 0 for block in EM340.blocks for address in range(block.address, block.address + block.count)}
    regs.update({
        0x0000: 2301, 0x0001: 0,             # 230.1 V: the low word comes first
        0x0002: 0x0002, 0x0003: 0x0001,      # 0x0001_0002 = 65538 -> 6553.8 V (order matters)
        0x000C: 16000, 0x000D: 0,            # x1000 -> 16 A
        0x0028: 0xFF9C, 0x0029: 0xFFFF,      # -100 x 0.1 W = -10 W
        0x0034: 110, 0x0035: 0,              # 11.0 kWh x10 -> 11000 Wh
    })
    reading = decode(EM340, regs)
    assert reading.voltage_v == (230.1, 6553.8, 0.0)
    assert reading.current_a == (16.0, 0.0, 0.0)
    assert reading.power_w == -10.0
    assert reading.energy_wh == 11000.0


def test_decode_accepts_block_responses() -> None:
    blocks = [(0x0000, [SDM630_REGISTERS[a] for a in range(12)]), (0x0034, [0x45B0, 0x1C00]),
              (0x0048, [0x449A, 0x5000])]
    assert decode(SDM630, blocks) == decode(SDM630, SDM630_REGISTERS)


def test_missing_register_is_a_meter_error() -> None:
    regs = dict(SDM630_REGISTERS)
    del regs[0x0049]
    with pytest.raises(MeterError, match="0x0049"):
        decode(SDM630, regs)


def test_nan_from_the_meter_is_a_meter_error() -> None:
    regs = dict(SDM630_REGISTERS)
    regs[0x0034], regs[0x0035] = 0x7FC0, 0x0000  # float32 NaN
    with pytest.raises(MeterError, match="not a number"):
        decode(SDM630, regs)


def test_every_configured_driver_has_a_map() -> None:
    from chargepoint.config import KNOWN_METER_DRIVERS

    for driver in KNOWN_METER_DRIVERS:
        assert register_map(driver).name == driver
    with pytest.raises(ValueError, match="unknown meter driver"):
        register_map("sdm999")


_values = st.floats(min_value=0, max_value=10_000, allow_nan=False)


@given(energy_kwh=st.integers(0, 10_000_000), power=st.integers(-20_000, 20_000),
       current=st.tuples(_values, _values, _values), voltage=st.tuples(_values, _values, _values))
def test_encode_then_decode_is_identity_within_each_meters_resolution(
        energy_kwh: int, power: int, current: tuple[float, float, float],
        voltage: tuple[float, float, float]) -> None:
    reading = MeterReading(energy_wh=energy_kwh * 100.0, power_w=float(power), current_a=current, voltage_v=voltage)
    for m in MAPS.values():
        back = decode(m, encode(m, reading))
        assert math.isclose(back.energy_wh, reading.energy_wh, rel_tol=1e-6, abs_tol=1e-3)
        assert math.isclose(back.power_w, reading.power_w, rel_tol=1e-6, abs_tol=0.1)
        for got, want in zip(back.current_a + back.voltage_v, current[:m.phases] + voltage[:m.phases], strict=True):
            assert math.isclose(got, want, rel_tol=1e-6, abs_tol=0.1)
