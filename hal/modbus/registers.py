"""Energy-meter register maps as data, and a pure decoder (field-notes.md §5).

A map lists where each quantity lives (0-based register address), how it is
encoded and the factor to the unit in its name. Reads are planned as a few
contiguous block requests; decode() turns the registers those requests
returned into a MeterReading. No I/O here: hal.modbus.meter does the bus.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

from hal.interfaces import MeterError, MeterReading

READ_HOLDING_REGISTERS = 0x03
READ_INPUT_REGISTERS = 0x04
MAX_REGISTERS_PER_READ = 125  # Modbus application protocol §6.3/§6.4


class Quantity(enum.StrEnum):
    VOLTAGE_V = "voltage_v"
    CURRENT_A = "current_a"
    POWER_W = "power_w"
    ENERGY_WH = "energy_wh"


class Encoding(enum.Enum):
    """(word count, struct format of the big-endian bytes, low word first)."""

    FLOAT32 = (2, ">f", False)     # IEEE 754, high word first (Eastron)
    U32 = (2, ">I", False)         # high word first (ABB)
    S32 = (2, ">i", False)
    U64 = (4, ">Q", False)
    S32_LOW_FIRST = (2, ">i", True)  # INT32, low word at the lower address (Carlo Gavazzi)

    @property
    def words(self) -> int:
        return self.value[0]


@dataclass(frozen=True)
class Field:
    quantity: Quantity
    address: int
    encoding: Encoding
    scale: float        # raw x scale = value in the quantity's unit
    phase: int = 0      # 1..3 for per-phase quantities, 0 for totals

    @property
    def end(self) -> int:
        """One past the last register of the field."""
        return self.address + self.encoding.words


@dataclass(frozen=True)
class Block:
    address: int
    count: int


@dataclass(frozen=True)
class RegisterMap:
    name: str
    function: int                  # READ_HOLDING_REGISTERS or READ_INPUT_REGISTERS
    phases: int
    fields: tuple[Field, ...]
    # Fields this close (registers in between) are read in one request. Only
    # where the meter answers every register in between: some meters reject a
    # read that touches an undocumented address.
    max_gap: int = 0

    @cached_property
    def blocks(self) -> tuple[Block, ...]:
        return plan_blocks(self.fields, self.max_gap)


def plan_blocks(fields: Iterable[Field], max_gap: int = 0,
                max_count: int = MAX_REGISTERS_PER_READ) -> tuple[Block, ...]:
    """Group fields into as few contiguous reads as the gap and size limits allow."""
    blocks: list[Block] = []
    for f in sorted(fields, key=lambda f: f.address):
        if blocks:
            last = blocks[-1]
            gap = f.address - (last.address + last.count)
            new_count = max(last.count, f.end - last.address)
            if gap <= max_gap and new_count <= max_count:
                blocks[-1] = Block(last.address, new_count)
                continue
        blocks.append(Block(f.address, f.encoding.words))
    return tuple(blocks)


Registers = Mapping[int, int] | Sequence[tuple[int, Sequence[int]]]


def registers_from_blocks(blocks: Iterable[tuple[int, Sequence[int]]]) -> dict[int, int]:
    """{address: value} from (start address, values) block responses."""
    out: dict[int, int] = {}
    for start, values in blocks:
        for offset, value in enumerate(values):
            out[start + offset] = value
    return out


def _raw(f: Field, registers: Mapping[int, int]) -> float:
    words_count, fmt, low_first = f.encoding.value
    try:
        words = [registers[f.address + i] for i in range(words_count)]
    except KeyError as exc:
        raise MeterError(f"register {exc.args[0]:#06x} missing for {f.quantity}") from None
    if any(not 0 <= w <= 0xFFFF for w in words):
        raise MeterError(f"register value out of range at {f.address:#06x}")
    if low_first:
        words.reverse()
    data = b"".join(w.to_bytes(2, "big") for w in words)
    if fmt == ">f":
        return _float32_as_displayed(data)
    return float(struct.unpack(fmt, data)[0])


def _float32_as_displayed(data: bytes) -> float:
    """The shortest decimal that encodes to these float32 bytes: the value the meter meant and displays.

    A float32 holds ~7 significant digits: an SDM630 at 12345.6 kWh sends 12345.599609375, which in
    whole Wh rounded down would bill 1 Wh less than the meter's own display. The shortest round-trip
    decimal keeps the order of the registers (it stays inside each float32's rounding interval).
    """
    value = float(struct.unpack(">f", data)[0])
    if not math.isfinite(value):
        return value
    for digits in range(1, 10):  # 9 significant digits always round-trip a float32
        candidate = float(f"{value:.{digits}g}")
        try:
            if struct.pack(">f", candidate) == data:
                return candidate
        except OverflowError:  # rounded past the float32 range
            continue
    return value


def decode(register_map: RegisterMap, registers: Registers) -> MeterReading:
    """A MeterReading from the registers one read of the map's blocks returned.

    Raises MeterError for a missing register or garbage (NaN/infinite floats):
    a meter that answers nonsense is as good as a lost one.
    """
    regs = registers if isinstance(registers, Mapping) else registers_from_blocks(registers)
    values: dict[tuple[Quantity, int], float] = {}
    for f in register_map.fields:
        value = _raw(f, regs) * f.scale
        if not math.isfinite(value):
            raise MeterError(f"{register_map.name}: {f.quantity} at {f.address:#06x} is not a number")
        # Milli-unit resolution is beyond every meter here; it strips float noise (230.1 not 230.10000000000002).
        values[(f.quantity, f.phase)] = round(value, 3)
    phases = range(1, register_map.phases + 1)
    return MeterReading(
        energy_wh=values[(Quantity.ENERGY_WH, 0)],
        power_w=values[(Quantity.POWER_W, 0)],
        current_a=tuple(values[(Quantity.CURRENT_A, p)] for p in phases),
        voltage_v=tuple(values[(Quantity.VOLTAGE_V, p)] for p in phases),
    )


def encode(register_map: RegisterMap, reading: MeterReading) -> dict[int, int]:
    """The registers a meter holding `reading` serves (inverse of decode; for simulated meters and tests)."""
    by_key: dict[tuple[Quantity, int], float] = {(Quantity.ENERGY_WH, 0): reading.energy_wh,
                                                 (Quantity.POWER_W, 0): reading.power_w}
    for p in range(1, register_map.phases + 1):
        by_key[(Quantity.CURRENT_A, p)] = reading.current_a[p - 1] if p <= len(reading.current_a) else 0.0
        by_key[(Quantity.VOLTAGE_V, p)] = reading.voltage_v[p - 1] if p <= len(reading.voltage_v) else 0.0
    out: dict[int, int] = {}
    for f in register_map.fields:
        words_count, fmt, low_first = f.encoding.value
        raw = by_key[(f.quantity, f.phase)] / f.scale
        data = struct.pack(fmt, raw if fmt == ">f" else round(raw))
        words = [int.from_bytes(data[i:i + 2], "big") for i in range(0, 2 * words_count, 2)]
        if low_first:
            words.reverse()
        for i, word in enumerate(words):
            out[f.address + i] = word
    return out


def _per_phase(quantity: Quantity, addresses: Sequence[int], encoding: Encoding, scale: float) -> tuple[Field, ...]:
    return tuple(Field(quantity, a, encoding, scale, phase) for phase, a in enumerate(addresses, start=1))


_F, _V, _A, _W, _E = Encoding.FLOAT32, Quantity.VOLTAGE_V, Quantity.CURRENT_A, Quantity.POWER_W, Quantity.ENERGY_WH

# Eastron SDM630 (v2) / SDM72 v2: input registers, float32 high word first; energy in kWh.
_SDM630_FIELDS = (
    *_per_phase(_V, (0x0000, 0x0002, 0x0004), _F, 1.0),
    *_per_phase(_A, (0x0006, 0x0008, 0x000A), _F, 1.0),
    Field(_W, 0x0034, _F, 1.0),
    Field(_E, 0x0048, _F, 1000.0),
)

# Eastron SDM120/220/230, single phase. Its voltage, current and power sit 6
# registers apart with undocumented addresses in between: read one by one.
_SDM120_FIELDS = (
    Field(_V, 0x0000, _F, 1.0, 1),
    Field(_A, 0x0006, _F, 1.0, 1),
    Field(_W, 0x000C, _F, 1.0),
    Field(_E, 0x0048, _F, 1000.0),
)

# ABB B23/B24: holding registers, unsigned/signed integers high word first,
# scaled: 0.1 V, 0.01 A, 0.01 W, 0.01 kWh (= 10 Wh). The instantaneous values
# 0x5B00..0x5B15 are one documented contiguous table.
_ABB_B23_FIELDS = (
    *_per_phase(_V, (0x5B00, 0x5B02, 0x5B04), Encoding.U32, 0.1),
    *_per_phase(_A, (0x5B0C, 0x5B0E, 0x5B10), Encoding.U32, 0.01),
    Field(_W, 0x5B14, Encoding.S32, 0.01),
    Field(_E, 0x5000, Encoding.U64, 10.0),
)

# Carlo Gavazzi EM340: input registers, INT32 low word first; V x10, A x1000,
# W x10, kWh x10 (= 100 Wh). 0x0000..0x0011 is a contiguous documented table
# (phase voltages, line voltages, currents).
_EM340_FIELDS = (
    *_per_phase(_V, (0x0000, 0x0002, 0x0004), Encoding.S32_LOW_FIRST, 0.1),
    *_per_phase(_A, (0x000C, 0x000E, 0x0010), Encoding.S32_LOW_FIRST, 0.001),
    Field(_W, 0x0028, Encoding.S32_LOW_FIRST, 0.1),
    Field(_E, 0x0034, Encoding.S32_LOW_FIRST, 100.0),
)

SDM630 = RegisterMap("sdm630", READ_INPUT_REGISTERS, 3, _SDM630_FIELDS)
SDM72 = RegisterMap("sdm72", READ_INPUT_REGISTERS, 3, _SDM630_FIELDS)  # the SDM630 v2 map
SDM120 = RegisterMap("sdm120", READ_INPUT_REGISTERS, 1, _SDM120_FIELDS)
ABB_B23 = RegisterMap("abb_b23", READ_HOLDING_REGISTERS, 3, _ABB_B23_FIELDS, max_gap=8)
EM340 = RegisterMap("em340", READ_INPUT_REGISTERS, 3, _EM340_FIELDS, max_gap=8)

MAPS: Mapping[str, RegisterMap] = {m.name: m for m in (SDM630, SDM72, SDM120, ABB_B23, EM340)}


def register_map(driver: str) -> RegisterMap:
    """The map for a `[meter] driver` name (chargepoint.config.KNOWN_METER_DRIVERS)."""
    try:
        return MAPS[driver]
    except KeyError:
        raise ValueError(f"unknown meter driver {driver!r} (known: {', '.join(MAPS)})") from None
