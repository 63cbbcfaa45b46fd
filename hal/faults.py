"""The one table from hardware faults to OCPP 1.6 error reporting.

Every hal.interfaces.Fault maps to the StatusNotification fields the central
system sees (OCPP 1.6 §7.6 ChargePointErrorCode, vendorErrorCode) and to what
it means for charging. Drivers only report faults; the EVSE controller looks
them up here and decides.

Two columns besides the error code:

- stops_charging: the EVSE must stop delivering energy (pilot to no PWM / F,
  relay open) while the fault is present.
- faulted: the connector status becomes Faulted. OCPP 1.6 §4.9: "When the
  'status' field is not Faulted, the condition should be considered a warning
  since charging operations are still possible", and EVCommunicationError
  "SHALL only be used with status Preparing, SuspendedEV, SuspendedEVSE and
  Finishing and be treated as warning".

Choices worth knowing:

- meter_lost -> PowerMeterFailure as a WARNING that does not stop charging.
  The energy keeps flowing safely; what is lost is billing accuracy: no
  MeterValues are sent while the meter is lost (never a stale or invented
  value), and meterStop falls back to the last good reading. Stopping a
  car's charge because an RS-485 meter missed a few polls is what field users
  complain about most; the central system still sees the error code (with
  the current status, e.g. Charging) and can stop the transaction remotely.
- pilot_fault (state E, diode check failed) -> EVCommunicationError: a Mode 3
  communication problem, a warning (SuspendedEVSE), but no energy flows.
- relay_weld -> PowerSwitchFailure, Faulted: the contactor cannot isolate the
  car, the station must not offer current again until serviced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from hal.interfaces import Fault

NO_ERROR = "NoError"


@dataclass(frozen=True)
class FaultReport:
    """How one hardware fault is reported and handled."""

    error_code: str            # OCPP 1.6 ChargePointErrorCode
    stops_charging: bool       # energy delivery must stop while present
    faulted: bool              # connector status Faulted (else: a warning, status unchanged)
    vendor_error_code: str     # StatusNotification.vendorErrorCode (CiString50)
    info: str                  # StatusNotification.info (CiString50)


# Ordered by severity: when several faults are present, the first one listed
# is the one reported (a StatusNotification carries a single errorCode).
FAULT_TABLE: Mapping[Fault, FaultReport] = MappingProxyType({
    Fault.GROUND_FAULT: FaultReport("GroundFailure", True, True, "HW-GF", "residual current device tripped"),
    Fault.RELAY_WELD: FaultReport("PowerSwitchFailure", True, True, "HW-RW", "contactor welded"),
    Fault.OVERCURRENT: FaultReport("OverCurrentFailure", True, True, "HW-OC", "over current protection tripped"),
    Fault.OVER_TEMPERATURE: FaultReport("HighTemperature", True, True, "HW-OT", "temperature too high"),
    Fault.LOCK_FAILURE: FaultReport("ConnectorLockFailure", True, True, "HW-LK", "connector lock failure"),
    Fault.PILOT_FAULT: FaultReport("EVCommunicationError", True, False, "HW-CP", "control pilot error"),
    Fault.METER_LOST: FaultReport("PowerMeterFailure", False, False, "HW-MT", "energy meter not answering"),
})

assert set(FAULT_TABLE) == set(Fault), "every Fault needs a row"

_SEVERITY = {fault: rank for rank, fault in enumerate(FAULT_TABLE)}


def report_for(fault: Fault) -> FaultReport:
    return FAULT_TABLE[fault]


def primary_fault(faults: Iterable[Fault]) -> Fault | None:
    """The fault to report when several are present (the most severe), or None."""
    present = list(faults)
    if not present:
        return None
    return min(present, key=_SEVERITY.__getitem__)


def error_code(faults: Iterable[Fault]) -> str:
    """The ChargePointErrorCode for a set of faults; "NoError" when there is none."""
    fault = primary_fault(faults)
    return NO_ERROR if fault is None else FAULT_TABLE[fault].error_code


def stops_charging(faults: Iterable[Fault]) -> bool:
    return any(FAULT_TABLE[f].stops_charging for f in faults)


def is_faulted(faults: Iterable[Fault]) -> bool:
    """True when the connector status must be Faulted (OCPP 1.6 §4.9)."""
    return any(FAULT_TABLE[f].faulted for f in faults)
