"""ChangeAvailability and Reset decisions as pure functions (OCPP 1.6 §5.2, §5.14, §7.36)."""

from __future__ import annotations

from chargepoint.services.operations import AvailabilityPlan, plan_availability, reset_reason

IDS = [1, 2]
ALL_OPERATIVE = {0: "Operative", 1: "Operative", 2: "Operative"}


def plan(connector_id: int, requested: str, *, current: dict[int, str] | None = None,
         busy: tuple[int, ...] = ()) -> AvailabilityPlan:
    return plan_availability(connector_id, requested, connector_ids=IDS, current=current or ALL_OPERATIVE,
                             busy=busy)


def test_unknown_connector_is_rejected() -> None:
    assert plan(3, "Inoperative") == AvailabilityPlan("Rejected")
    assert plan(3, "Operative").status == "Rejected"


def test_idle_connector_changes_now() -> None:
    p = plan(1, "Inoperative")
    assert (p.status, p.apply_now, p.schedule) == ("Accepted", (1,), ())


def test_already_in_the_requested_state_is_accepted_with_nothing_to_do() -> None:
    p = plan(1, "Inoperative", current={0: "Operative", 1: "Inoperative", 2: "Operative"}, busy=(1,))
    assert (p.status, p.apply_now, p.schedule) == ("Accepted", (), ())
    p = plan(0, "Operative")
    assert (p.status, p.apply_now) == ("Accepted", ())


def test_busy_connector_is_scheduled() -> None:
    p = plan(1, "Inoperative", busy=(1,))
    assert (p.status, p.apply_now, p.schedule) == ("Scheduled", (), (1,))


def test_connector_zero_idle_connectors_now_busy_ones_and_itself_later() -> None:
    p = plan(0, "Inoperative", busy=(2,))
    assert (p.status, p.apply_now, p.schedule) == ("Scheduled", (1,), (0, 2))
    p = plan(0, "Inoperative")
    assert (p.status, set(p.apply_now), p.schedule) == ("Accepted", {0, 1, 2}, ())


def test_operative_never_waits_and_cancels_a_scheduled_change() -> None:
    current = {0: "Inoperative", 1: "Inoperative", 2: "Operative"}
    p = plan(0, "Operative", current=current, busy=(2,))
    assert (p.status, set(p.apply_now), set(p.cancel)) == ("Accepted", {0, 1}, {0, 1, 2})


def test_operative_on_a_connector_also_drops_a_scheduled_inoperative_of_connector_0() -> None:
    """Applied later, connector 0's change would take the connector out of service again
    (and did so while it was Preparing: §4.9 has no B8; found by the schema fuzz)."""
    p = plan(1, "Operative", busy=(1,))
    assert (p.status, p.apply_now, set(p.cancel)) == ("Accepted", (), {0, 1})


def test_reset_reasons_7_36() -> None:
    assert reset_reason("Soft") == "SoftReset"
    assert reset_reason("Hard") == "HardReset"
