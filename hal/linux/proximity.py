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
from hal.pp_coding import PP_RANGES_OHM, cable_rating_a_for_pp_ohm

log = logging.getLogger("chargepoint.hal.linux")

# Rating reported for an open, shorted, out-of-range or unreadable PP. Not None: to the
# EVSE logic None means "tethered cable, no PP" (no cap, hal.interfaces.ProximityPilot,
# chargepoint.evse.iec61851.offered_current_a); 0.0 means "no valid cable", so an EV
# seen on the pilot through a cable without a valid PP gets no current.
NO_VALID_CABLE_A = 0.0

SAMPLES = 3   # median of three conversions per read: one noisy sample does not pause charging


def resistance_ohm_for_pp_v(pp_v: float, *, pullup_ohm: float, supply_v: float) -> float:
    """Rc from the PP voltage of the divider (pure). inf: open, 0.0: short."""
    if not pp_v < supply_v:   # also NaN
        return math.inf
    if pp_v <= 0.0:
        return 0.0
    return pullup_ohm * pp_v / (supply_v - pp_v)


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
