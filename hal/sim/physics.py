"""The simulated EV and supply as pure functions (interfaces.md §6).

No clock, no I/O: the board feeds in what the EVSE drives (pilot duty, fault
signal, relay contacts) and the EV's wishes, and gets back the CP state and
the currents that flow.
"""

from __future__ import annotations

from dataclasses import dataclass

from hal.interfaces import CpState
from hal.pilot_duty import MIN_CURRENT_A, current_for_duty

SUPPLY_VOLTAGE_V = 230.0

# interfaces.md §6: a newly plugged EV wants energy, 32 A, 3 phases.
DEFAULT_EV_MAX_CURRENT_A = 32.0
DEFAULT_EV_PHASES = 3


@dataclass
class EvModel:
    """What is plugged into one connector and what it wants."""

    plugged: bool = False
    wants_energy: bool = True
    max_current_a: float = DEFAULT_EV_MAX_CURRENT_A
    phases: int = DEFAULT_EV_PHASES
    cable_rating_a: float | None = None  # PP resistor of a loose cable; None: tethered

    def plug(self, cable_rating_a: float | None = None) -> None:
        """A new car arrives with the defaults of interfaces.md §6."""
        self.plugged = True
        self.wants_energy = True
        self.max_current_a = DEFAULT_EV_MAX_CURRENT_A
        self.phases = DEFAULT_EV_PHASES
        self.cable_rating_a = cable_rating_a

    def unplug(self) -> None:
        self.plugged = False
        self.cable_rating_a = None


def cp_state(*, plugged: bool, wants_energy: bool, duty_percent: float,
             fault_signal: bool, pilot_fault: bool) -> CpState:
    """The CP state an EVSE measures (IEC 61851-1 Annex A).

    E: CP shorted / diode missing (pilot_fault). F: the EVSE itself drives -12 V.
    A: nothing plugged. C: the EV closes S2 only when it wants energy AND sees
    a PWM offering at least 6 A (IEC 61851-1 A.2.2); otherwise it stays in B.
    """
    if pilot_fault:
        return CpState.E
    if fault_signal:
        return CpState.F
    if not plugged:
        return CpState.A
    if wants_energy and current_for_duty(duty_percent) >= MIN_CURRENT_A:
        return CpState.C
    return CpState.B


def phase_currents_a(*, state: CpState, contacts_closed: bool, duty_percent: float,
                     ev_max_current_a: float, ev_phases: int, supply_phases: int) -> tuple[float, ...]:
    """Current per supply phase (L1 first).

    Current flows only while the contacts are closed and the EV is in C; the EV
    draws min(offer, its own maximum) on each of its phases, starting at L1. A
    three-phase car on a single-phase connector charges on L1 only.
    """
    zero = (0.0,) * supply_phases
    if not contacts_closed or state is not CpState.C:
        return zero
    per_phase_a = max(0.0, min(current_for_duty(duty_percent), ev_max_current_a))
    loaded = min(ev_phases, supply_phases)
    return tuple(per_phase_a if i < loaded else 0.0 for i in range(supply_phases))


def power_w(voltage_v: tuple[float, ...], current_a: tuple[float, ...]) -> float:
    return sum(v * i for v, i in zip(voltage_v, current_a, strict=True))


def energy_increment_wh(power_w: float, elapsed_s: float) -> float:
    """Energy at constant power over elapsed_s (negative intervals count as none)."""
    return power_w * max(0.0, elapsed_s) / 3600.0
