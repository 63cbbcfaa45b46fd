"""Narrow hardware interfaces. Drivers implement them; no charging logic lives here.

The charging logic (chargepoint.evse) reads inputs through these interfaces,
decides, then acts. The simulator (hal.sim) and the real Linux backend
(hal.linux) implement the same protocols, so software-in-the-loop is a
configuration change (`[hal] backend`).

Units are in the names: _a amperes, _v volts, _w watts, _wh watt-hours,
_percent duty cycle in percent.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class CpState(enum.StrEnum):
    """IEC 61851-1 control-pilot states, by the CP high level."""

    A = "A"  # +12 V: no EV connected
    B = "B"  # +9 V: EV connected, not ready
    C = "C"  # +6 V: EV ready, charging
    D = "D"  # +3 V: charging, ventilation required
    E = "E"  # 0 V: short / no power (error)
    F = "F"  # -12 V: EVSE not available (fault)


class Fault(enum.StrEnum):
    """Hardware faults a board can report. Mapped to OCPP error codes in hal.faults."""

    GROUND_FAULT = "ground_fault"   # RCD / residual current
    OVERCURRENT = "overcurrent"
    RELAY_WELD = "relay_weld"       # contactor feedback says closed while commanded open
    METER_LOST = "meter_lost"       # energy meter does not answer
    LOCK_FAILURE = "lock_failure"   # connector lock did not reach the commanded state
    OVER_TEMPERATURE = "over_temperature"
    PILOT_FAULT = "pilot_fault"     # CP state E, or diode check failed


@dataclass(frozen=True)
class MeterReading:
    """One consistent read of an energy meter.

    energy_wh is the meter's own import register (never rebased: OCPP
    Energy.Active.Import.Register). Per-phase lists have one entry per phase
    the meter measures (1 or 3).
    """

    energy_wh: float
    power_w: float
    current_a: tuple[float, ...] = ()
    voltage_v: tuple[float, ...] = ()


class MeterError(Exception):
    """The meter did not answer, or answered garbage, after the driver's retries."""


@runtime_checkable
class ControlPilot(Protocol):
    def offer_current(self, current_a: float) -> None:
        """Offer this current with 1 kHz PWM. 0 means no PWM (100 % duty, steady +12 V/+9 V)."""

    @property
    def duty_percent(self) -> float:
        """The PWM duty cycle in percent now generated (100.0 when no PWM)."""

    def read_state(self) -> CpState:
        """The CP state measured now."""

    def set_fault_signal(self, on: bool) -> None:
        """Drive the pilot to -12 V (state F) while the EVSE is faulted or unavailable."""


@runtime_checkable
class ProximityPilot(Protocol):
    def cable_rating_a(self) -> float | None:
        """Cable current rating from the PP resistor (hal.pp_coding); None for a tethered
        cable / not fitted; 0.0 when a PP is fitted but reads open, short or out of range
        (no valid cable: the EVSE offers nothing)."""


@runtime_checkable
class Relay(Protocol):
    def set_closed(self, closed: bool) -> None:
        """Command the contactor."""

    @property
    def commanded_closed(self) -> bool: ...

    def feedback_closed(self) -> bool | None:
        """Mirror-contact feedback; None when the board has none."""


@runtime_checkable
class ConnectorLock(Protocol):
    def set_locked(self, locked: bool) -> bool:
        """Command the lock; True when the feedback confirms the new state."""

    def is_locked(self) -> bool: ...


@runtime_checkable
class FaultInputs(Protocol):
    def active_faults(self) -> frozenset[Fault]:
        """Hardware faults present now (ground fault, overcurrent, welded relay...)."""


@runtime_checkable
class EnergyMeter(Protocol):
    async def read(self) -> MeterReading:
        """Read the meter. Raises MeterError after the driver's own retries."""

    async def close(self) -> None: ...


IdTagListener = Callable[[str], Awaitable[None] | None]


@runtime_checkable
class IdentificationReader(Protocol):
    def set_listener(self, listener: IdTagListener) -> None:
        """Called with the idTag (CiString20) each time a card is presented."""


@dataclass
class NetworkLinkState:
    name: str           # "wifi", "gsm", "ethernet"
    up: bool
    metric: int = 0     # lower is preferred


@runtime_checkable
class NetworkLinks(Protocol):
    def links(self) -> list[NetworkLinkState]:
        """All links, preferred first."""

    def active_link(self) -> str | None:
        """The link traffic leaves through now, or None when every link is down."""


@dataclass
class ConnectorHardware:
    """Everything the EVSE logic needs for one connector."""

    connector_id: int
    pilot: ControlPilot
    relay: Relay
    lock: ConnectorLock
    faults: FaultInputs
    meter: EnergyMeter
    proximity: ProximityPilot | None = None
    phases: int = 3


@dataclass
class Board:
    """A charger's hardware: its connectors plus station-wide inputs."""

    connectors: list[ConnectorHardware]
    id_reader: IdentificationReader
    network: NetworkLinks
    extra: dict[str, object] = field(default_factory=dict)

    def connector(self, connector_id: int) -> ConnectorHardware:
        return self.connectors[connector_id - 1]

    async def close(self) -> None:
        for c in self.connectors:
            await c.meter.close()
