"""OCPP 1.6 connector status: derivation (section 7.7, errata 3.55/3.64), the section 4.9
transition table, and MinimumStatusDuration (section 9.1.20, errata 3.19)."""

from __future__ import annotations

import logging

import pytest

from chargepoint.evse.status import (
    TRANSITIONS,
    ChargePointErrorCode,
    ChargePointStatus,
    ConnectorFacts,
    StatusReport,
    StatusReporter,
    check_transition,
    derive,
    derive_charge_point,
    transition_name,
)
from hal.interfaces import Fault

S = ChargePointStatus
E = ChargePointErrorCode

# --------------------------------------------------------------------------- derive: customer scenarios


def test_available_when_unplugged() -> None:
    assert derive(ConnectorFacts(plugged=False)) == StatusReport(S.AVAILABLE)


def test_preparing_when_plugged_waiting_for_authorization_4_9_a2() -> None:
    assert derive(ConnectorFacts(plugged=True)).status == S.PREPARING


def test_preparing_when_authorized_waiting_for_plug_4_9_a2() -> None:
    assert derive(ConnectorFacts(plugged=False, preparing=True)).status == S.PREPARING


def test_charging_when_ev_draws_power() -> None:
    facts = ConnectorFacts(plugged=True, transaction_active=True, energy_offered=True, ev_drawing=True)
    assert derive(facts) == StatusReport(S.CHARGING)


def test_suspended_ev_when_offered_but_not_taking_errata_3_55() -> None:
    # EV in B2 (PWM on, EV not asking) is SuspendedEV too.
    facts = ConnectorFacts(plugged=True, transaction_active=True, energy_offered=True, ev_drawing=False)
    assert derive(facts).status == S.SUSPENDED_EV


def test_suspended_evse_when_limit_below_6a_withholds_energy() -> None:
    facts = ConnectorFacts(plugged=True, transaction_active=True, energy_offered=False)
    assert derive(facts).status == S.SUSPENDED_EVSE


def test_suspended_evse_when_authorized_before_the_transaction_is_confirmed() -> None:
    # Free vend / authorized session whose StartTransaction is not confirmed yet, paused by a limit.
    assert derive(ConnectorFacts(plugged=True, energy_allowed=True)).status == S.SUSPENDED_EVSE


def test_suspended_evse_has_precedence_over_suspended_ev_4_9() -> None:
    # Both suspended: EV not drawing and EVSE not offering.
    facts = ConnectorFacts(plugged=True, transaction_active=True, energy_offered=False, ev_drawing=False)
    assert derive(facts).status == S.SUSPENDED_EVSE


def test_finishing_after_transaction_stopped_while_plugged() -> None:
    assert derive(ConnectorFacts(plugged=True, finishing=True)).status == S.FINISHING
    assert derive(ConnectorFacts(plugged=False, finishing=True)).status == S.AVAILABLE


@pytest.mark.parametrize(("fault", "code"), [
    (Fault.GROUND_FAULT, E.GROUND_FAILURE),
    (Fault.OVERCURRENT, E.OVER_CURRENT_FAILURE),
    (Fault.RELAY_WELD, E.POWER_SWITCH_FAILURE),
    (Fault.LOCK_FAILURE, E.CONNECTOR_LOCK_FAILURE),
    (Fault.OVER_TEMPERATURE, E.HIGH_TEMPERATURE),
])
def test_faulted_with_error_code_for_hardware_fault_7_6(fault: Fault, code: ChargePointErrorCode) -> None:
    for plugged, tx in ((False, False), (True, True)):
        report = derive(ConnectorFacts(plugged=plugged, transaction_active=tx, faults=frozenset({fault})))
        assert (report.status, report.error_code) == (S.FAULTED, code)
        assert report.vendor_error_code


def test_most_severe_fault_is_reported() -> None:
    report = derive(ConnectorFacts(plugged=True, faults=frozenset({Fault.LOCK_FAILURE, Fault.GROUND_FAULT})))
    assert report.error_code == E.GROUND_FAILURE


def test_meter_lost_is_a_warning_with_the_operative_status_4_9() -> None:
    facts = ConnectorFacts(plugged=True, transaction_active=True, energy_offered=True, ev_drawing=True,
                           faults=frozenset({Fault.METER_LOST}))
    assert (derive(facts).status, derive(facts).error_code) == (S.CHARGING, E.POWER_METER_FAILURE)


def test_ev_communication_error_only_with_allowed_statuses_4_9() -> None:
    pilot = frozenset({Fault.PILOT_FAULT})
    with_tx = derive(ConnectorFacts(plugged=True, transaction_active=True, faults=pilot))
    assert (with_tx.status, with_tx.error_code) == (S.SUSPENDED_EVSE, E.EV_COMMUNICATION_ERROR)
    unplugged = derive(ConnectorFacts(plugged=False, faults=pilot))
    assert (unplugged.status, unplugged.error_code) == (S.AVAILABLE, E.NO_ERROR)


def test_unavailable_after_change_availability() -> None:
    assert derive(ConnectorFacts(plugged=True, available=False)).status == S.UNAVAILABLE
    # A fault wins over Unavailable.
    facts = ConnectorFacts(plugged=False, available=False, faults=frozenset({Fault.GROUND_FAULT}))
    assert derive(facts).status == S.FAULTED


def test_reserved_until_reservation_identity_presented_4_9_g2() -> None:
    assert derive(ConnectorFacts(plugged=False, reserved=True)).status == S.RESERVED
    assert derive(ConnectorFacts(plugged=True, reserved=True)).status == S.RESERVED
    assert derive(ConnectorFacts(plugged=True, reserved=True, transaction_active=True)).status == S.SUSPENDED_EVSE


def test_ev_side_disconnect_with_transaction_running_is_suspended_ev_with_info_4_9() -> None:
    report = derive(ConnectorFacts(plugged=False, transaction_active=True))
    assert report == StatusReport(S.SUSPENDED_EV, E.NO_ERROR, "EV side disconnected")


def test_connector_0_only_available_unavailable_faulted_7_7() -> None:
    assert derive_charge_point().status == S.AVAILABLE
    assert derive_charge_point(available=False).status == S.UNAVAILABLE
    assert derive_charge_point(error_code=E.INTERNAL_ERROR) == StatusReport(S.FAULTED, E.INTERNAL_ERROR)
    assert derive_charge_point(error_code=E.NO_ERROR).status == S.AVAILABLE


# --------------------------------------------------------------------------- transition table

# The section 4.9 table, cell by cell (with errata 3.20: B6).
SPEC_CELLS = """
A2 A3 A4 A5 A7 A8 A9
B1 B3 B4 B5 B6 B9
C1 C4 C5 C6 C8 C9
D1 D3 D5 D6 D8 D9
E1 E3 E4 E6 E8 E9
F1 F2 F8 F9
G1 G2 G8 G9
H1 H2 H3 H4 H5 H9
I1 I2 I3 I4 I5 I6 I7 I8
""".split()


def test_transition_table_matches_section_4_9_cell_by_cell() -> None:
    allowed = {transition_name(a, b) for a, tos in TRANSITIONS.items() for b in tos}
    assert allowed == set(SPEC_CELLS)
    assert set(TRANSITIONS) == set(S)


@pytest.mark.parametrize(("from_status", "to_status", "name"), [
    (S.CHARGING, S.PREPARING, "C2"),
    (S.AVAILABLE, S.FINISHING, "A6"),
    (S.FINISHING, S.CHARGING, "F3"),
    (S.RESERVED, S.CHARGING, "G3"),
    (S.UNAVAILABLE, S.RESERVED, "H7"),
    (S.PREPARING, S.RESERVED, "B7"),
])
def test_illegal_transition_is_named(from_status: S, to_status: S, name: str) -> None:
    illegal = check_transition(from_status, to_status)
    assert illegal is not None and illegal.name == name
    assert name in str(illegal) and "4.9" in str(illegal)


def test_allowed_transitions_and_first_report_are_not_flagged() -> None:
    assert check_transition(None, S.CHARGING) is None
    assert check_transition(S.PREPARING, S.FINISHING) is None   # errata 3.20
    assert check_transition(S.CHARGING, S.CHARGING) is None


def test_connector_0_transitions_limited_to_three_statuses() -> None:
    assert check_transition(S.AVAILABLE, S.FAULTED, connector_id=0) is None
    assert check_transition(S.AVAILABLE, S.CHARGING, connector_id=0) is not None


# --------------------------------------------------------------------------- MinimumStatusDuration


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_status_reported_only_after_stable_for_minimum_status_duration_9_1_20() -> None:
    clock = FakeClock()
    min_s = [5.0]
    reporter = StatusReporter(lambda: min_s[0], clock)
    assert reporter.observe(StatusReport(S.AVAILABLE)) is None     # not stable yet
    clock.now_s += 4.9
    assert reporter.observe(StatusReport(S.AVAILABLE)) is None
    clock.now_s += 0.1
    due = reporter.observe(StatusReport(S.AVAILABLE))
    assert due is not None and due.report.status == S.AVAILABLE and due.since_s == 1000.0
    clock.now_s += 100
    assert reporter.observe(StatusReport(S.AVAILABLE)) is None     # only changes are reported


def test_short_lived_status_is_not_reported() -> None:
    clock = FakeClock()
    reporter = StatusReporter(lambda: 5.0, clock)
    reporter.observe(StatusReport(S.PREPARING))
    clock.now_s += 10
    assert reporter.observe(StatusReport(S.PREPARING)) is not None
    # Preparing -> SuspendedEVSE for 1 s -> Charging (section 4.9's example).
    reporter.observe(StatusReport(S.SUSPENDED_EVSE))
    clock.now_s += 1
    assert reporter.observe(StatusReport(S.CHARGING)) is None
    clock.now_s += 4.9
    assert reporter.poll() is None
    clock.now_s += 0.1
    due = reporter.poll()
    assert due is not None and due.report.status == S.CHARGING and due.illegal is None
    # A status that returns to the reported one within the window sends nothing.
    reporter.observe(StatusReport(S.SUSPENDED_EV))
    clock.now_s += 2
    reporter.observe(StatusReport(S.CHARGING))
    clock.now_s += 60
    assert reporter.poll() is None


def test_zero_minimum_duration_reports_every_change_errata_3_19() -> None:
    clock = FakeClock()
    reporter = StatusReporter(lambda: 0.0, clock)
    seen = [reporter.observe(StatusReport(s)) for s in (S.AVAILABLE, S.PREPARING, S.CHARGING, S.FINISHING)]
    assert [d.report.status for d in seen if d] == [S.AVAILABLE, S.PREPARING, S.CHARGING, S.FINISHING]


def test_error_code_change_is_a_change() -> None:
    clock = FakeClock()
    reporter = StatusReporter(lambda: 0.0, clock)
    reporter.observe(StatusReport(S.CHARGING))
    due = reporter.observe(StatusReport(S.CHARGING, E.POWER_METER_FAILURE))
    assert due is not None and due.report.error_code == E.POWER_METER_FAILURE


def test_faulted_is_debounced_like_any_status_9_1_20() -> None:
    clock = FakeClock()
    reporter = StatusReporter(lambda: 3.0, clock)
    reporter.observe(StatusReport(S.AVAILABLE))
    clock.now_s += 3
    assert reporter.poll() is not None
    reporter.observe(StatusReport(S.FAULTED, E.GROUND_FAILURE))
    assert reporter.poll() is None
    assert reporter.due_in_s() == pytest.approx(3.0)
    clock.now_s += 3
    due = reporter.poll()
    assert due is not None and due.report.status == S.FAULTED


def test_illegal_transition_is_reported_and_logged_by_name(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    reporter = StatusReporter(lambda: 0.0, clock, connector_id=2)
    reporter.observe(StatusReport(S.CHARGING))
    with caplog.at_level(logging.WARNING, logger="chargepoint.evse.status"):
        due = reporter.observe(StatusReport(S.PREPARING))
    assert due is not None and due.report.status == S.PREPARING
    assert due.illegal is not None and due.illegal.name == "C2"
    assert "connector 2" in caplog.text and "C2" in caplog.text


def test_report_now_sends_current_status_regardless_errata_3_22() -> None:
    clock = FakeClock()
    reporter = StatusReporter(lambda: 60.0, clock)
    assert reporter.report_now() is None
    reporter.observe(StatusReport(S.PREPARING))
    due = reporter.report_now()
    assert due is not None and due.report.status == S.PREPARING
    clock.now_s += 120
    assert reporter.poll() is None, "already reported"
