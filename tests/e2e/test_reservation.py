"""Reservations end to end: ReserveNow, CancelReservation, use, expiry, restart.

In-process charger on the simulated board against the strict bundled central system.
OCPP 1.6 §3.11, §5.1 CancelReservation, §5.13 ReserveNow (errata 4.12), §7.40
ReservationStatus, §9.3.1 ReserveConnectorZeroSupported, §4.8 reservationId in
StartTransaction, §4.9 Reserved.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest

from chargepoint.app import ChargePointApp
from chargepoint.csms.server import Received
from chargepoint.services import reservation as reservation_module
from chargepoint.services.reservation import ReservationService
from tests.support.harness import CP_ID, ChargerEnv, charger_env, eventually, mark, running, split_log_lines

pytestmark = pytest.mark.asyncio

WAIT_S = 15.0
TWO_CONNECTORS = [{"max_current_a": 32, "phases": 3}, {"max_current_a": 16, "phases": 1}]








def expiry(seconds: float) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def reserve(reservation_id: int, connector_id: int, id_tag: str, *, seconds: float = 3600,
            parent_id_tag: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"connectorId": connector_id, "expiryDate": expiry(seconds), "idTag": id_tag,
                               "reservationId": reservation_id}
    if parent_id_tag is not None:
        payload["parentIdTag"] = parent_id_tag
    return payload


async def call(env: ChargerEnv, action: str, payload: dict[str, Any]) -> dict[str, Any]:
    return await env.csms.call(CP_ID, action, payload, timeout_s=WAIT_S)


async def status_of(env: ChargerEnv, connector_id: int, status: str, *, after: int = 0) -> Received:
    return await env.csms.wait_for(
        "StatusNotification", lambda p: p["connectorId"] == connector_id and p["status"] == status,
        after_index=after, timeout_s=WAIT_S)


def reservations(app: ChargePointApp) -> ReservationService:
    service: ReservationService = app.service(ReservationService)
    return service


def stored_ids(app: ChargePointApp) -> list[int]:
    return [r.reservation_id for r in app.store.reservations.list()]


async def plug_and_swipe(env: ChargerEnv, id_tag: str, connector_id: int = 1) -> Received:
    """Plug, then the card (a reserved connector stays Reserved when plugged: §4.9 G2)."""
    after = mark(env)
    await env.asim("sim.plug", connector=connector_id)

    async def plugged() -> bool:
        return bool((await env.astatus())["connectors"][connector_id - 1]["plugged"])

    await eventually(plugged, timeout_s=WAIT_S, message="EV plugged")
    await env.asim("sim.swipe", id_tag=id_tag, connector=connector_id)
    return await env.csms.wait_for("StartTransaction", lambda p: p["idTag"] == id_tag, after_index=after,
                                   timeout_s=WAIT_S)


# --------------------------------------------------------------------------- reserve, use, cancel


async def test_reserved_connector_serves_only_its_idtag_and_start_carries_the_reservation_5_13(
        tmp_path: Path) -> None:
    """§5.13: Accepted -> Reserved; another idTag is refused on it; the reserved idTag starts,
    StartTransaction.req carries the reservationId (§4.8) and the reservation is over."""
    async with charger_env(tmp_path) as env, running(env) as app:
        after = mark(env)
        assert await call(env, "ReserveNow", reserve(7, 1, "TAG1")) == {"status": "Accepted"}
        await status_of(env, 1, "Reserved", after=after)
        assert stored_ids(app) == [7]
        assert (await env.astatus())["connectors"][0]["reservation"]["reservation_id"] == 7
        assert await call(env, "RemoteStartTransaction", {"idTag": "OTHER", "connectorId": 1}) == \
            {"status": "Rejected"}
        assert reservations(app).blocks(1, "OTHER") is True
        assert reservations(app).reservation_for(1, "tag1") == 7   # idTags are case-insensitive (§7.28)

        start = await plug_and_swipe(env, "TAG1")
        assert start.payload["reservationId"] == 7
        assert stored_ids(app) == []
        await status_of(env, 1, "Charging", after=start.index)
    env.csms.assert_no_violations()


async def test_parent_idtag_of_the_reservation_admits_the_group_5_13(tmp_path: Path) -> None:
    """§5.13: an incoming idTag whose parentIdTag matches the reservation's parentIdTag may use it
    (its parent learnt from Authorize.conf, errata 4.12)."""
    async with charger_env(tmp_path) as env, running(env):
        env.csms.authorize["CHILD"] = {"status": "Accepted", "parentIdTag": "FAMILY"}
        assert await call(env, "ReserveNow", reserve(3, 1, "MUM", parent_id_tag="FAMILY")) == \
            {"status": "Accepted"}
        start = await plug_and_swipe(env, "CHILD")
        assert start.payload["reservationId"] == 3
    env.csms.assert_no_violations()


async def test_cancel_reservation_accepted_then_rejected_5_1(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env, running(env) as app:
        after = mark(env)
        assert await call(env, "ReserveNow", reserve(5, 1, "TAG1")) == {"status": "Accepted"}
        await status_of(env, 1, "Reserved", after=after)
        assert await call(env, "CancelReservation", {"reservationId": 5}) == {"status": "Accepted"}
        await status_of(env, 1, "Available", after=after)
        assert stored_ids(app) == []
        assert await call(env, "CancelReservation", {"reservationId": 5}) == {"status": "Rejected"}
        assert await call(env, "CancelReservation", {"reservationId": 99}) == {"status": "Rejected"}
    env.csms.assert_no_violations()


async def test_expired_reservation_makes_the_connector_available_5_13(tmp_path: Path) -> None:
    """§5.13: at expiryDate the reservation ends and a StatusNotification says Available."""
    async with charger_env(tmp_path) as env, running(env) as app:
        after = mark(env)
        assert await call(env, "ReserveNow", reserve(9, 1, "TAG1", seconds=2)) == {"status": "Accepted"}
        reserved = await status_of(env, 1, "Reserved", after=after)
        await status_of(env, 1, "Available", after=reserved.index)
        assert stored_ids(app) == []
        # A reservation whose expiryDate has already passed is not made.
        assert await call(env, "ReserveNow", reserve(10, 1, "TAG1", seconds=-60)) == {"status": "Rejected"}
    env.csms.assert_no_violations()


async def test_earlier_reservation_made_while_a_later_one_waits_expires_on_time_5_13(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The expiry loop sleeps until the earliest expiryDate: a reservation made meanwhile with an
    earlier one wakes it, and ends at its own expiryDate while the later one stays."""
    # Only the event may bring the wait forward: no periodic re-read of the wall clock.
    monkeypatch.setattr(reservation_module, "WALL_CLOCK_RECHECK_S", 3600.0)
    async with charger_env(tmp_path) as env:
        env.doc["connector"] = TWO_CONNECTORS
        async with running(env, last_connector=2) as app:
            after = mark(env)
            assert await call(env, "ReserveNow", reserve(41, 2, "TAG2")) == {"status": "Accepted"}   # an hour
            await status_of(env, 2, "Reserved", after=after)
            assert await call(env, "ReserveNow", reserve(42, 1, "TAG1", seconds=2)) == {"status": "Accepted"}
            reserved = await status_of(env, 1, "Reserved", after=after)
            await status_of(env, 1, "Available", after=reserved.index)
            assert stored_ids(app) == [41]
            assert reservations(app).is_reserved(2)
    env.csms.assert_no_violations()


async def test_reservation_ends_at_once_when_the_clock_is_found_past_its_expiry_5_13(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Expiry is by the synchronised wall clock: when a sync moves it past the expiryDate, the
    reservation ends then, not when the old wall-clock wait would have ended."""
    monkeypatch.setattr(reservation_module, "WALL_CLOCK_RECHECK_S", 3600.0)
    async with charger_env(tmp_path) as env, running(env) as app:
        after = mark(env)
        assert await call(env, "ReserveNow", reserve(51, 1, "TAG1", seconds=600)) == {"status": "Accepted"}
        reserved = await status_of(env, 1, "Reserved", after=after)
        # The time source now says it is 20 minutes later than the charger thought.
        app.clock.apply_offset((app.clock.offset_s or 0.0) + 1200.0, "ntp", stepped=False)
        await status_of(env, 1, "Available", after=reserved.index)
        assert stored_ids(app) == []
    env.csms.assert_no_violations()


async def test_same_reservation_id_replaces_the_reservation_5_13(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env, running(env) as app:
        assert await call(env, "ReserveNow", reserve(4, 1, "OLD")) == {"status": "Accepted"}
        assert await call(env, "ReserveNow", reserve(4, 1, "NEW")) == {"status": "Accepted"}
        assert [r.id_tag for r in app.store.reservations.list()] == ["NEW"]
        assert reservations(app).blocks(1, "OLD") and not reservations(app).blocks(1, "NEW")
        # A different reservation for the reserved connector: Occupied (§5.13).
        assert await call(env, "ReserveNow", reserve(8, 1, "NEW")) == {"status": "Occupied"}
    env.csms.assert_no_violations()


# --------------------------------------------------------------------------- refusals


async def test_a_reservation_id_beyond_64_bits_is_rejected_7_40(tmp_path: Path) -> None:
    """The 1.6 schema bounds no reservationId; one SQLite cannot store (beyond a signed 64-bit
    INTEGER) is Rejected and leaves the connector Available. It was answered InternalError
    (found by the schema fuzz)."""
    async with charger_env(tmp_path) as env, running(env) as app:
        for reservation_id in (2**63, -(2**63) - 1, 10**30):
            assert await call(env, "ReserveNow", reserve(reservation_id, 1, "TAG1")) == {"status": "Rejected"}
        assert stored_ids(app) == []
        assert not reservations(app).is_reserved(1)
        # The edges that do fit are taken.
        assert await call(env, "ReserveNow", reserve(2**63 - 1, 1, "TAG1")) == {"status": "Accepted"}
        assert stored_ids(app) == [2**63 - 1]
    env.csms.assert_no_violations()


async def test_an_id_tag_with_line_breaks_stays_on_one_log_line(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """ReserveNow's idTag is the central system's text (CiString20, any character): logged raw,
    a CR/LF in it forged a log line; one line per event (docs/ARCHITECTURE.md; schema fuzz)."""
    caplog.set_level(logging.INFO, logger="chargepoint")
    tag = "A\r\nINFO forged"
    async with charger_env(tmp_path) as env, running(env):
        assert await call(env, "ReserveNow", reserve(7, 1, tag)) == {"status": "Accepted"}
    lines = [r.getMessage() for r in caplog.records if r.name == "chargepoint.reservation"]
    assert any(repr(tag) in line and "Accepted" in line for line in lines), lines
    split = split_log_lines(caplog.records)
    assert not split, split
    env.csms.assert_no_violations()


async def test_occupied_faulted_unavailable_rejected_7_40(tmp_path: Path) -> None:
    """§7.40: Occupied (EV plugged / transaction), Faulted, Unavailable, Rejected (unknown connector)."""
    async with charger_env(tmp_path) as env:
        env.doc["connector"] = TWO_CONNECTORS
        async with running(env, last_connector=2):
            assert await call(env, "ReserveNow", reserve(1, 3, "TAG1")) == {"status": "Rejected"}

            after = mark(env)
            await env.asim("sim.plug", connector=1)
            await status_of(env, 1, "Preparing", after=after)
            assert await call(env, "ReserveNow", reserve(1, 1, "TAG1")) == {"status": "Occupied"}
            await env.asim("sim.swipe", id_tag="TAG1", connector=1)
            start = await env.csms.wait_for("StartTransaction", after_index=after, timeout_s=WAIT_S)
            assert "reservationId" not in start.payload
            assert await call(env, "ReserveNow", reserve(1, 1, "TAG2")) == {"status": "Occupied"}

            after = mark(env)
            await env.asim("sim.fault", connector=2, kind="ground_fault")
            await status_of(env, 2, "Faulted", after=after)
            assert await call(env, "ReserveNow", reserve(2, 2, "TAG2")) == {"status": "Faulted"}
            await env.asim("sim.clear", connector=2)
            await status_of(env, 2, "Available", after=after)

            assert await call(env, "ChangeAvailability", {"connectorId": 2, "type": "Inoperative"}) == \
                {"status": "Accepted"}
            assert await call(env, "ReserveNow", reserve(2, 2, "TAG2")) == {"status": "Unavailable"}
            # Connector 0: connector 1 busy, connector 2 Unavailable -> nothing free: Occupied.
            assert await call(env, "ReserveNow", reserve(3, 0, "TAG2")) == {"status": "Occupied"}
            assert await call(env, "ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}) == \
                {"status": "Scheduled"}
            assert await call(env, "ReserveNow", reserve(3, 2, "TAG2")) == {"status": "Unavailable"}
    env.csms.assert_no_violations()


async def test_reservation_ends_when_its_connector_faults_5_13(tmp_path: Path) -> None:
    """§5.13 (3): a reservation is terminated when its connector becomes Faulted (or Unavailable)."""
    async with charger_env(tmp_path) as env, running(env) as app:
        assert await call(env, "ReserveNow", reserve(6, 1, "TAG1")) == {"status": "Accepted"}
        after = mark(env)
        await env.asim("sim.fault", connector=1, kind="ground_fault")
        await status_of(env, 1, "Faulted", after=after)
        await eventually(lambda: stored_ids(app) == [], timeout_s=WAIT_S, message="reservation ended")
        await env.asim("sim.clear", connector=1)
        await status_of(env, 1, "Available", after=after)

        assert await call(env, "ReserveNow", reserve(7, 1, "TAG1")) == {"status": "Accepted"}
        assert await call(env, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}) == \
            {"status": "Accepted"}
        await eventually(lambda: stored_ids(app) == [], timeout_s=WAIT_S, message="reservation ended")
    env.csms.assert_no_violations()


# --------------------------------------------------------------------------- connector 0


async def test_connector_zero_holds_the_last_free_connector_5_13(tmp_path: Path) -> None:
    """§5.13 / §9.3.1: a reservation for connector 0 picks no connector but keeps one available for
    its idTag: with one connector it is held (Reserved, others refused); a second connector-0
    reservation finds nothing left (Occupied); the reserved idTag starts with the reservationId."""
    async with charger_env(tmp_path) as env, running(env) as app:
        after = mark(env)
        assert await call(env, "ReserveNow", reserve(11, 0, "TAG0")) == {"status": "Accepted"}
        await status_of(env, 1, "Reserved", after=after)
        assert await call(env, "ReserveNow", reserve(12, 0, "TAG9")) == {"status": "Occupied"}
        assert await call(env, "ReserveNow", reserve(12, 1, "TAG9")) == {"status": "Occupied"}
        assert await call(env, "RemoteStartTransaction", {"idTag": "OTHER"}) == {"status": "Rejected"}
        start = await plug_and_swipe(env, "TAG0")
        assert start.payload["reservationId"] == 11 and start.payload["connectorId"] == 1
        assert stored_ids(app) == []
    env.csms.assert_no_violations()


async def test_connector_zero_with_two_connectors_holds_the_second_when_the_first_is_taken_5_13(
        tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        env.doc["connector"] = TWO_CONNECTORS
        async with running(env, last_connector=2) as app:
            assert await call(env, "ReserveNow", reserve(21, 0, "TAG0")) == {"status": "Accepted"}
            assert reservations(app).is_reserved(1) is False and reservations(app).is_reserved(2) is False
            after = mark(env)
            start = await plug_and_swipe(env, "OTHER", connector_id=1)   # one is still free: allowed
            assert "reservationId" not in start.payload
            await status_of(env, 2, "Reserved", after=after)
            assert reservations(app).blocks(2, "SOMEONE") is True
            assert reservations(app).reservation_for(2, "TAG0") == 21
    env.csms.assert_no_violations()


# --------------------------------------------------------------------------- persistence


async def test_reservation_survives_a_restart(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        async with running(env):
            assert await call(env, "ReserveNow", reserve(31, 1, "TAG1")) == {"status": "Accepted"}
        after = mark(env)
        async with running(env) as app:
            first = await env.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1,
                                            after_index=after, timeout_s=WAIT_S)
            assert first.payload["status"] == "Reserved"
            assert stored_ids(app) == [31]
            assert await call(env, "CancelReservation", {"reservationId": 31}) == {"status": "Accepted"}
            await status_of(env, 1, "Available", after=first.index)
    env.csms.assert_no_violations()
