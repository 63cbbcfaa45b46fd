"""The OCPP 1.6 connector status machine, as pure functions and tables.

- `derive()` maps the facts about a connector to a ChargePointStatus and error
  code (OCPP 1.6 section 7.7, errata 3.55 / 3.64, and the platform's meaning of
  each status, requirements.md "Status notifications the platform relies on").
- `TRANSITIONS` is the section 4.9 table of allowed status changes, as data.
- `StatusReporter` decides when a StatusNotification.req is due
  (MinimumStatusDuration, section 9.1.20; errata 3.19: a change SHALL be sent).

No clock is read here: the reporter is given a monotonic() callable.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from hal import faults as hal_faults
from hal.interfaces import Fault

log = logging.getLogger("chargepoint.evse.status")


class ChargePointStatus(enum.StrEnum):
    """OCPP 1.6 section 7.7 (wire values)."""

    AVAILABLE = "Available"
    PREPARING = "Preparing"
    CHARGING = "Charging"
    SUSPENDED_EV = "SuspendedEV"
    SUSPENDED_EVSE = "SuspendedEVSE"
    FINISHING = "Finishing"
    RESERVED = "Reserved"
    UNAVAILABLE = "Unavailable"
    FAULTED = "Faulted"


class ChargePointErrorCode(enum.StrEnum):
    """OCPP 1.6 section 7.6 (wire values)."""

    CONNECTOR_LOCK_FAILURE = "ConnectorLockFailure"
    EV_COMMUNICATION_ERROR = "EVCommunicationError"
    GROUND_FAILURE = "GroundFailure"
    HIGH_TEMPERATURE = "HighTemperature"
    INTERNAL_ERROR = "InternalError"
    LOCAL_LIST_CONFLICT = "LocalListConflict"
    NO_ERROR = "NoError"
    OTHER_ERROR = "OtherError"
    OVER_CURRENT_FAILURE = "OverCurrentFailure"
    OVER_VOLTAGE = "OverVoltage"
    POWER_METER_FAILURE = "PowerMeterFailure"
    POWER_SWITCH_FAILURE = "PowerSwitchFailure"
    READER_FAILURE = "ReaderFailure"
    RESET_FAILURE = "ResetFailure"
    UNDER_VOLTAGE = "UnderVoltage"
    WEAK_SIGNAL = "WeakSignal"


S = ChargePointStatus
E = ChargePointErrorCode

# --------------------------------------------------------------------------- faults -> error codes

# Fault -> error code, Faulted or warning, vendor code: one table, hal.faults.
# EVCommunicationError "SHALL only be used with status Preparing, SuspendedEV,
# SuspendedEVSE and Finishing and be treated as warning" (section 4.9).
EV_COMMUNICATION_ERROR_STATUSES = frozenset({S.PREPARING, S.SUSPENDED_EV, S.SUSPENDED_EVSE, S.FINISHING})


def _error_code(fault: Fault) -> ChargePointErrorCode:
    try:
        return ChargePointErrorCode(hal_faults.report_for(fault).error_code)
    except (KeyError, ValueError):   # a fault kind or code hal.faults does not know
        return E.INTERNAL_ERROR


def _fault_report(faults: frozenset[Fault]) -> tuple[Fault | None, bool]:
    """The fault to report and whether the connector is Faulted (the most severe Faulted one wins)."""
    known = frozenset(f for f in faults if f in hal_faults.FAULT_TABLE)
    if known != faults:   # unknown kinds are treated as Faulted (InternalError)
        return min(faults - known), True
    faulted = frozenset(f for f in faults if hal_faults.report_for(f).faulted)
    if faulted:
        return hal_faults.primary_fault(faulted), True
    return hal_faults.primary_fault(faults), False


# --------------------------------------------------------------------------- derive


@dataclass(frozen=True)
class ConnectorFacts:
    """What the status of one connector (id > 0) is derived from; nothing is stored."""

    plugged: bool                      # an EV is connected: CP state is not A
    transaction_active: bool = False
    energy_allowed: bool = False       # authorized (or free vend), possibly before StartTransaction.conf
    energy_offered: bool = False       # the EVSE offers energy now (PWM on)
    ev_drawing: bool = False           # power above a small threshold, or C with the contactor closed
    faults: frozenset[Fault] = frozenset()
    available: bool = True             # ChangeAvailability Operative (and no internal reason to refuse)
    reserved: bool = False             # ReserveNow holds this connector
    preparing: bool = False            # identified/authorized, waiting for the plug
    finishing: bool = False            # transaction stopped, cable still in
    info: str | None = None            # e.g. "EV side disconnected" (section 4.9)
    cable_held: bool = False           # the lock holds the cable for its user (section 4.10, errata 3.5)


@dataclass(frozen=True)
class StatusReport:
    """What a StatusNotification.req carries (section 6.47), minus connectorId and timestamp."""

    status: ChargePointStatus
    error_code: ChargePointErrorCode = ChargePointErrorCode.NO_ERROR
    info: str | None = None
    vendor_error_code: str | None = None


def derive(facts: ConnectorFacts) -> StatusReport:
    """The connector's status now, first match wins.

    1. Faulted: a fault that hal.faults marks Faulted (section 7.7: "not
       available for energy delivery"). Other faults (meter lost, pilot / EV
       communication) are warnings: their error code goes with the status
       below (section 4.9), EVCommunicationError only with the statuses allowed.
    2. Unavailable: ChangeAvailability Inoperative.
    3. Finishing: the transaction stopped and the cable is still in, or still
       locked in the socket for its user after the EV side was unplugged
       (section 4.10, errata 3.5: not available to a new user, section 7.7).
    4. With a transaction (or energy allowed / offered without one, A3/A4/A5):
       SuspendedEVSE when the EVSE withholds energy (limit below 6 A, invalid id,
       EV communication problem), with precedence over SuspendedEV (section 4.9);
       Charging when the EV draws power; else SuspendedEV (errata 3.55: "if the
       EV is in B2 this also means SuspendedEV"). Unplugged with a transaction
       still running (StopTransactionOnEVSideDisconnect false) is SuspendedEV
       with info "EV side disconnected" (section 4.9).
    5. Plugged, no transaction: Reserved while a reservation holds the connector
       (until its idTag is presented, G2), else Preparing (waiting for an idTag).
    6. Unplugged: Reserved, Preparing (authorized, waiting for the plug), or
       Available.
    """
    fault, faulted = _fault_report(facts.faults)
    if fault is None:
        code, vendor, fault_info = E.NO_ERROR, None, None
    else:
        code = _error_code(fault)
        known = fault in hal_faults.FAULT_TABLE
        vendor = hal_faults.report_for(fault).vendor_error_code if known else str(fault)
        fault_info = hal_faults.report_for(fault).info if known else None
    if faulted:
        return StatusReport(S.FAULTED, code, facts.info or fault_info, vendor)
    if not facts.available:
        return StatusReport(S.UNAVAILABLE, E.NO_ERROR, facts.info)

    # Not Faulted: a fault present is a warning reported with the operative status.
    status = _operative_status(facts)
    info = facts.info
    if facts.transaction_active and not facts.plugged and info is None:
        info = "EV side disconnected"
    if code == E.EV_COMMUNICATION_ERROR and status not in EV_COMMUNICATION_ERROR_STATUSES:
        code, vendor, fault_info = E.NO_ERROR, None, None
    return StatusReport(status, code, info or fault_info, vendor)


def _operative_status(facts: ConnectorFacts) -> ChargePointStatus:
    if (facts.finishing and facts.plugged) or (facts.cable_held and not facts.transaction_active):
        return S.FINISHING
    if facts.transaction_active or facts.energy_allowed or facts.energy_offered or facts.ev_drawing:
        if not facts.plugged:
            return S.SUSPENDED_EV
        if not facts.energy_offered:
            return S.SUSPENDED_EVSE
        return S.CHARGING if facts.ev_drawing else S.SUSPENDED_EV
    if facts.reserved:
        return S.RESERVED
    if facts.plugged or facts.preparing:
        return S.PREPARING
    return S.AVAILABLE


def derive_charge_point(*, available: bool = True, error_code: ChargePointErrorCode | None = None,
                        info: str | None = None) -> StatusReport:
    """Connector 0 (the charge point main controller): Available, Unavailable or Faulted only.

    Section 4.9: "The status of ConnectorId 0 has no direct connection to the
    status of the individual Connectors (> 0)" -- it reflects the controller's own
    availability (ChangeAvailability on connector 0) and station-wide faults.
    """
    if error_code is not None and error_code not in (E.NO_ERROR, E.EV_COMMUNICATION_ERROR):
        return StatusReport(S.FAULTED, error_code, info)
    return StatusReport(S.AVAILABLE if available else S.UNAVAILABLE, E.NO_ERROR, info)


CHARGE_POINT_STATUSES = frozenset({S.AVAILABLE, S.UNAVAILABLE, S.FAULTED})

# --------------------------------------------------------------------------- transitions

# OCPP 1.6 section 4.9, "which status transitions are possible" (connectorId > 0),
# with errata 3.20 (B6: Preparing -> Finishing on ConnectionTimeOut). Row = from,
# entries = allowed "to". The code in the spec's table is given per entry.
TRANSITIONS: dict[ChargePointStatus, frozenset[ChargePointStatus]] = {
    S.AVAILABLE: frozenset({S.PREPARING, S.CHARGING, S.SUSPENDED_EV, S.SUSPENDED_EVSE,  # A2 A3 A4 A5
                            S.RESERVED, S.UNAVAILABLE, S.FAULTED}),                     # A7 A8 A9
    S.PREPARING: frozenset({S.AVAILABLE, S.CHARGING, S.SUSPENDED_EV, S.SUSPENDED_EVSE,  # B1 B3 B4 B5
                            S.FINISHING, S.FAULTED}),                                   # B6 B9
    S.CHARGING: frozenset({S.AVAILABLE, S.SUSPENDED_EV, S.SUSPENDED_EVSE,               # C1 C4 C5
                           S.FINISHING, S.UNAVAILABLE, S.FAULTED}),                     # C6 C8 C9
    S.SUSPENDED_EV: frozenset({S.AVAILABLE, S.CHARGING, S.SUSPENDED_EVSE,               # D1 D3 D5
                               S.FINISHING, S.UNAVAILABLE, S.FAULTED}),                 # D6 D8 D9
    S.SUSPENDED_EVSE: frozenset({S.AVAILABLE, S.CHARGING, S.SUSPENDED_EV,               # E1 E3 E4
                                 S.FINISHING, S.UNAVAILABLE, S.FAULTED}),               # E6 E8 E9
    S.FINISHING: frozenset({S.AVAILABLE, S.PREPARING, S.UNAVAILABLE, S.FAULTED}),      # F1 F2 F8 F9
    S.RESERVED: frozenset({S.AVAILABLE, S.PREPARING, S.UNAVAILABLE, S.FAULTED}),       # G1 G2 G8 G9
    S.UNAVAILABLE: frozenset({S.AVAILABLE, S.PREPARING, S.CHARGING, S.SUSPENDED_EV,    # H1 H2 H3 H4
                              S.SUSPENDED_EVSE, S.FAULTED}),                           # H5 H9
    S.FAULTED: frozenset({S.AVAILABLE, S.PREPARING, S.CHARGING, S.SUSPENDED_EV,        # I1 I2 I3 I4
                          S.SUSPENDED_EVSE, S.FINISHING, S.RESERVED, S.UNAVAILABLE}),  # I5 I6 I7 I8
}

_ROW = {S.AVAILABLE: "A", S.PREPARING: "B", S.CHARGING: "C", S.SUSPENDED_EV: "D", S.SUSPENDED_EVSE: "E",
        S.FINISHING: "F", S.RESERVED: "G", S.UNAVAILABLE: "H", S.FAULTED: "I"}
_COLUMN = {S.AVAILABLE: 1, S.PREPARING: 2, S.CHARGING: 3, S.SUSPENDED_EV: 4, S.SUSPENDED_EVSE: 5,
           S.FINISHING: 6, S.RESERVED: 7, S.UNAVAILABLE: 8, S.FAULTED: 9}


def transition_name(from_status: ChargePointStatus, to_status: ChargePointStatus) -> str:
    """The section 4.9 table's cell name, e.g. "C5" for Charging -> SuspendedEVSE."""
    return f"{_ROW[from_status]}{_COLUMN[to_status]}"


@dataclass(frozen=True)
class IllegalTransition:
    """A status change that the section 4.9 table does not list."""

    from_status: ChargePointStatus
    to_status: ChargePointStatus

    @property
    def name(self) -> str:
        return transition_name(self.from_status, self.to_status)

    def __str__(self) -> str:
        return f"{self.from_status} -> {self.to_status} ({self.name}) is not in the OCPP 1.6 section 4.9 table"


def check_transition(from_status: ChargePointStatus | None, to_status: ChargePointStatus,
                     *, connector_id: int = 1) -> IllegalTransition | None:
    """None when allowed (or first report / no change); else the named illegal transition.

    For connector 0 any change among Available / Unavailable / Faulted is allowed;
    any other status there is illegal (section 7.7).
    """
    if connector_id == 0:
        if to_status not in CHARGE_POINT_STATUSES:
            return IllegalTransition(from_status or to_status, to_status)
        return None
    if from_status is None or from_status == to_status:
        return None
    if to_status in TRANSITIONS[from_status]:
        return None
    return IllegalTransition(from_status, to_status)


# --------------------------------------------------------------------------- reporting


@dataclass(frozen=True)
class DueReport:
    """A StatusNotification.req to send now."""

    report: StatusReport
    since_s: float                        # monotonic time the status began (its timestamp)
    illegal: IllegalTransition | None     # set when the table does not list the change


class StatusReporter:
    """Decides when a StatusNotification.req is due for one connector (or connector 0).

    MinimumStatusDuration (section 9.1.20) is "the minimum duration that a Charge
    Point or Connector status is stable before a StatusNotification.req PDU is
    sent": a new status is reported once it has held that long, and only if it
    differs from the last one reported (errata 3.19: every change SHALL be sent,
    "taking into account some minimum status duration"). The spec makes no
    exception for Faulted, and neither does this class: a fault shorter than
    MinimumStatusDuration is not reported (with the default 0 every change is).
    A status that comes back to the one last reported within the window sends
    nothing. An error-code change is a change (section 4.9: a StatusNotification
    also informs about errors).

    Choice on an illegal transition (not in the 4.9 table): the new status is
    reported anyway -- the central system must see what the connector really is,
    a made-up intermediate status would be a lie -- and the transition is logged
    by name (e.g. "C2") and returned in DueReport.illegal.
    """

    def __init__(self, min_duration_s: Callable[[], float], monotonic: Callable[[], float], *,
                 connector_id: int = 1) -> None:
        self._min_duration_s = min_duration_s
        self._monotonic = monotonic
        self.connector_id = connector_id
        self._candidate: StatusReport | None = None
        self._candidate_since_s = 0.0
        self._reported: StatusReport | None = None

    @property
    def last_reported(self) -> StatusReport | None:
        return self._reported

    @property
    def current(self) -> StatusReport | None:
        """The latest status observed (reported or not)."""
        return self._candidate

    def observe(self, report: StatusReport) -> DueReport | None:
        """Feed the status derived now; returns a report when one is due."""
        now_s = self._monotonic()
        if report != self._candidate:
            self._candidate = report
            self._candidate_since_s = now_s
        return self.poll()

    def poll(self) -> DueReport | None:
        """A report due now because the candidate has become stable long enough, else None."""
        candidate = self._candidate
        if candidate is None or candidate == self._reported:
            return None
        min_s = max(0.0, float(self._min_duration_s()))
        if self._monotonic() - self._candidate_since_s < min_s:
            return None
        return self._issue(candidate)

    def due_in_s(self) -> float | None:
        """Seconds until the pending candidate becomes due; None when nothing is pending."""
        if self._candidate is None or self._candidate == self._reported:
            return None
        min_s = max(0.0, float(self._min_duration_s()))
        return max(0.0, self._candidate_since_s + min_s - self._monotonic())

    def report_now(self) -> DueReport | None:
        """The current status, due regardless of history or duration.

        For TriggerMessage(StatusNotification) and after BootNotification Accepted
        (errata 3.22: send the status of connector 0 and every connector).
        """
        if self._candidate is None:
            return None
        return self._issue(self._candidate)

    def _issue(self, report: StatusReport) -> DueReport:
        previous = self._reported.status if self._reported is not None else None
        illegal = check_transition(previous, report.status, connector_id=self.connector_id)
        if illegal is not None:
            log.warning("connector %d: illegal status transition %s", self.connector_id, illegal)
        self._reported = report
        return DueReport(report, self._candidate_since_s, illegal)
