"""Charging profiles and reservations persist across reboots."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from chargepoint.store import Reservation, Store


def _profile(profile_id: int, connector_id: int, limit: float | Decimal = 16.0) -> dict[str, object]:
    return {
        "chargingProfileId": profile_id,
        "connectorId": connector_id,
        "stackLevel": 0,
        "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]},
    }


def test_profiles_round_trip_and_replace_by_id(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        s.profiles.save(_profile(1, 0))
        s.profiles.save(_profile(2, 1))
        s.profiles.save(_profile(1, 2, 10.0))  # same chargingProfileId: replaced
    with Store(tmp_path) as s:
        loaded = s.profiles.load_all()
        assert [(p["chargingProfileId"], p["connectorId"]) for p in loaded] == [(1, 2), (2, 1)]
        assert loaded[0]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 10.0
        s.profiles.delete(1)
        assert [p["chargingProfileId"] for p in s.profiles.load_all()] == [2]


def test_profile_with_decimal_limit_from_schema_validation_is_stored(store: Store) -> None:
    store.profiles.save(_profile(3, 1, Decimal("13.2")), connector_id=1)
    period = store.profiles.load_all()[0]["chargingSchedule"]["chargingSchedulePeriod"][0]
    assert period["limit"] == 13.2


def test_reservations_upsert_delete_list(tmp_path: Path) -> None:
    r1 = Reservation(1, 1, "TAG1", None, "2026-11-24T12:00:00.000Z")
    with Store(tmp_path) as s:
        s.reservations.upsert(r1)
        s.reservations.upsert(Reservation(2, 2, "TAG2", "PARENT", "2026-11-24T13:00:00.000Z"))
        s.reservations.upsert(Reservation(1, 1, "TAG9", None, "2026-11-24T14:00:00.000Z"))  # same id: replaced
    with Store(tmp_path) as s:
        assert [r.id_tag for r in s.reservations.list()] == ["TAG9", "TAG2"]
        assert s.reservations.get(2) == Reservation(2, 2, "TAG2", "PARENT", "2026-11-24T13:00:00.000Z")
        assert s.reservations.delete(1) is True and s.reservations.delete(1) is False
        assert [r.reservation_id for r in s.reservations.list()] == [2]


def test_reservation_ids_beyond_64_bits_are_never_found_and_never_stored(store: Store) -> None:
    """A reservationId is an unbounded JSON integer: CancelReservation(2**63) raised sqlite3's
    OverflowError (answered InternalError; found by tests/e2e/test_fuzz_actions.py)."""
    store.reservations.upsert(Reservation(2**63 - 1, 1, "TAG1", None, "2026-11-24T12:00:00.000Z"))
    store.reservations.upsert(Reservation(-(2**63), 1, "TAG2", None, "2026-11-24T12:00:00.000Z"))
    for beyond in (2**63, -(2**63) - 1, 10**30):
        assert store.reservations.get(beyond) is None
        assert store.reservations.delete(beyond) is False
        with pytest.raises(ValueError, match="64-bit"):
            store.reservations.upsert(Reservation(beyond, 1, "TAG3", None, "2026-11-24T12:00:00.000Z"))
    assert [r.id_tag for r in store.reservations.list()] == ["TAG2", "TAG1"]
    assert store.reservations.delete(2**63 - 1) is True
