"""Proximity pilot (PP) of a socket-outlet: the cable's current rating from its resistor.

A detachable cable codes its rating with a resistor Rc between PP and PE in the
plug (IEC 61851-1 Annex B, IEC 62196-2). The board measures it as a voltage
divider: a known pull-up `pullup_ohm` from `supply_v` to PP, Rc from PP to PE,
the ADC (an IIO channel, like the CP level) reading the PP voltage V. Then

    Rc = pullup_ohm * V / (supply_v - V)

V at or above the supply is an open PP (no cable), V at or below 0 a short.
"""

from __future__ import annotations

import logging
import math
import statistics

from hal.linux.sysfs import Adc, SysfsError

log = logging.getLogger("chargepoint.hal.linux")

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

# Rating reported for an open, shorted, out-of-range or unreadable PP. Not None: to the
# EVSE logic None means "tethered cable, no PP" (no cap, hal.interfaces.ProximityPilot,
# chargepoint.evse.iec61851.cable_rating_a_for_resistance_ohm); 0.0 means "no valid
# cable", so an EV seen on the pilot through a cable without a valid PP gets no current.
NO_VALID_CABLE_A = 0.0

SAMPLES = 3   # median of three conversions per read: one noisy sample does not pause charging


def resistance_ohm_for_pp_v(pp_v: float, *, pullup_ohm: float, supply_v: float) -> float:
    """Rc from the PP voltage of the divider (pure). inf: open, 0.0: short."""
    if not pp_v < supply_v:   # also NaN
        return math.inf
    if pp_v <= 0.0:
        return 0.0
    return pullup_ohm * pp_v / (supply_v - pp_v)


def cable_rating_a_for_pp_ohm(resistance_ohm: float) -> float | None:
    """The rating coded by Rc (pure); None when no range matches (open, short, out of range)."""
    for low_ohm, high_ohm, rating_a in PP_RANGES_OHM:
        if low_ohm <= resistance_ohm < high_ohm:
            return rating_a
    return None


class LinuxProximity:
    """ProximityPilot on an IIO ADC channel behind a pull-up divider."""

    def __init__(self, adc: Adc, *, pullup_ohm: float, supply_v: float, connector_id: int) -> None:
        self._adc = adc
        self.pullup_ohm = pullup_ohm
        self.supply_v = supply_v
        self._connector_id = connector_id
        self._last: str | None = None   # the decoded state last logged

    def resistance_ohm(self) -> float:
        """Rc now (median of SAMPLES conversions). Raises SysfsError."""
        pp_v = statistics.median(self._adc.read_v() for _ in range(SAMPLES))
        return resistance_ohm_for_pp_v(pp_v, pullup_ohm=self.pullup_ohm, supply_v=self.supply_v)

    def cable_rating_a(self) -> float | None:
        try:
            resistance = self.resistance_ohm()
        except SysfsError as exc:
            self._note("unreadable", "PP ADC unreadable (%s): no current", exc, error=True)
            return NO_VALID_CABLE_A
        rating = cable_rating_a_for_pp_ohm(resistance)
        if rating is not None:
            self._note(f"{rating:g} A", "cable rated %g A (PP %.0f ohm)", rating, resistance)
            return rating
        if resistance >= PP_RANGES_OHM[-1][1]:
            self._note("open", "PP open: no cable")
        else:
            self._note("invalid", "PP %.0f ohm is no valid cable coding (short?): no current", resistance)
        return NO_VALID_CABLE_A

    def _note(self, state: str, message: str, *args: object, error: bool = False) -> None:
        # One line per change of the decoded state, not per read (the controller reads every step).
        if state == self._last:
            return
        self._last = state
        (log.error if error else log.info)("connector %d: " + message, self._connector_id, *args)
