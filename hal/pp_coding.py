"""Proximity pilot (PP) resistor coding of a detachable cable (IEC 61851-1 Annex B,
IEC 62196-2): resistance -> the cable's current rating.

Pure, shared by every ProximityPilot driver (as hal.pilot_duty is for the control pilot).
"""

from __future__ import annotations

# Rc interpretation ranges (lower bound inclusive) -> cable rating. Nominal values from
# IEC 61851-1 Annex B / IEC 62196-2: 100 ohm 63 A (70 A single-phase), 220 ohm 32 A,
# 680 ohm 20 A, 1.5 kohm 13 A. The ranges are those of IEC 61851-1 as reproduced in
# Phoenix Contact's EV Charge Control Basic manual (106377_en_04, table 5-1): < 75 ohm
# error, 75..150 ohm 63 A, 150..330 ohm 32 A, 330..1000 ohm 20 A, 1000..2200 ohm 13 A,
# > 2200 ohm no cable. The standard's own table was not available to check them
# against; every nominal value sits well inside its range (+-3 % resistors plus ADC error).
PP_RANGES_OHM: tuple[tuple[float, float, float], ...] = (
    (75.0, 150.0, 63.0),
    (150.0, 330.0, 32.0),
    (330.0, 1000.0, 20.0),
    (1000.0, 2200.0, 13.0),
)


def cable_rating_a_for_pp_ohm(resistance_ohm: float) -> float | None:
    """The rating coded by Rc (pure); None when no range matches (open, short, out of range)."""
    for low_ohm, high_ohm, rating_a in PP_RANGES_OHM:
        if low_ohm <= resistance_ohm < high_ohm:
            return rating_a
    return None
