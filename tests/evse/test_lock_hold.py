"""The cable lock held for its user with the EV side unplugged (OCPP 1.6 §4.10, §9.1.33,
errata 3.5): the pure decision and the status it shows."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chargepoint.evse.iec61851 import Inputs, Memory, decide, step
from chargepoint.evse.status import ChargePointStatus, ConnectorFacts, derive
from hal.interfaces import CpState


@given(st.sampled_from(list(CpState)), st.booleans(), st.booleans())
def test_a_held_lock_stays_locked_in_every_pilot_state_4_10(cp_state: CpState, energy_allowed: bool,
                                                            available: bool) -> None:
    inputs = Inputs(cp_state=cp_state, energy_allowed=energy_allowed, available=available, lock_held=True)
    assert decide(inputs).lock
    outputs, _ = step(inputs, Memory(), 0.0)
    assert outputs.lock


def test_without_a_hold_the_ev_side_unplug_unlocks() -> None:
    assert not decide(Inputs(cp_state=CpState.A, energy_allowed=True)).lock
    assert decide(Inputs(cp_state=CpState.C, energy_allowed=True)).lock


def test_a_held_lock_offers_no_energy_without_an_ev() -> None:
    outputs = decide(Inputs(cp_state=CpState.A, energy_allowed=True, lock_held=True))
    assert outputs.offer_current_a == 0.0 and not outputs.relay_closed


def test_a_held_cable_after_the_transaction_is_finishing_even_unplugged_7_7() -> None:
    """§7.7 Finishing: the transaction stopped and the connector is not available to a new user."""
    assert derive(ConnectorFacts(plugged=False, cable_held=True)).status == ChargePointStatus.FINISHING
    assert derive(ConnectorFacts(plugged=True, cable_held=True)).status == ChargePointStatus.FINISHING


def test_a_hold_during_the_transaction_keeps_the_transaction_status_4_9() -> None:
    facts = ConnectorFacts(plugged=False, transaction_active=True, energy_allowed=True, cable_held=True)
    report = derive(facts)
    assert report.status == ChargePointStatus.SUSPENDED_EV and report.info == "EV side disconnected"


def test_unavailable_still_wins_over_a_held_cable_5_2() -> None:
    assert derive(ConnectorFacts(plugged=False, cable_held=True, available=False)).status == \
        ChargePointStatus.UNAVAILABLE
