"""Charging profiles and reservations: state the central system installs and expects to persist.

Charging profiles survive reboots (OCPP 1.6 §3.13.6: a charger offline keeps
applying them). A profile is stored whole as JSON, keyed by chargingProfileId,
with the connector it was installed on in "connectorId" (SetChargingProfile's
connectorId is outside the profile, so the smart-charging service adds it).
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chargepoint.store.db import dumps, loads

if TYPE_CHECKING:
    from chargepoint.store.db import Store


class ProfileRepo:
    """The repository the smart-charging service expects: load_all / save / delete."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def load_all(self) -> list[dict[str, Any]]:
        rows = self._store.query("SELECT body FROM charging_profiles ORDER BY profile_id")
        return [dict(loads(r[0])) for r in rows]

    def save(self, profile_json: dict[str, Any], connector_id: int | None = None) -> None:
        """Insert or replace by chargingProfileId; `connector_id` overrides profile_json["connectorId"]."""
        body = dict(profile_json)
        if connector_id is not None:
            body["connectorId"] = connector_id
        profile_id = int(body["chargingProfileId"])
        connector = body.get("connectorId")
        self._store.execute(
            "INSERT INTO charging_profiles (profile_id, connector_id, body) VALUES (?, ?, ?)"
            " ON CONFLICT (profile_id) DO UPDATE SET connector_id = excluded.connector_id, body = excluded.body",
            (profile_id, None if connector is None else int(connector), dumps(body)),
        )

    def delete(self, profile_id: int) -> None:
        self._store.execute("DELETE FROM charging_profiles WHERE profile_id = ?", (profile_id,))

    def clear(self) -> None:
        self._store.execute("DELETE FROM charging_profiles")


@dataclass(frozen=True)
class Reservation:
    reservation_id: int
    connector_id: int
    id_tag: str
    parent_id_tag: str | None
    expiry_date: str  # ISO 8601, as in ReserveNow.req


# SQLite's INTEGER is a signed 64-bit value; binding a larger Python int raises OverflowError.
# A reservationId is a JSON integer with no bound in the 1.6 schema, so 2**63 arrives valid.
SQLITE_INTEGER_MIN = -(2**63)
SQLITE_INTEGER_MAX = 2**63 - 1


def fits_sqlite_integer(value: int) -> bool:
    return SQLITE_INTEGER_MIN <= value <= SQLITE_INTEGER_MAX


class ReservationRepo:
    def __init__(self, store: Store) -> None:
        self._store = store

    def upsert(self, reservation: Reservation) -> None:
        """ReserveNow with a known reservationId replaces that reservation (OCPP 1.6 §5.13).
        ValueError for a reservationId beyond 64 bits (check `fits_sqlite_integer` first)."""
        if not fits_sqlite_integer(reservation.reservation_id):
            raise ValueError(f"reservationId {reservation.reservation_id} does not fit a 64-bit integer")
        self._store.execute(
            "INSERT INTO reservations (reservation_id, connector_id, id_tag, parent_id_tag, expiry_date)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (reservation_id) DO UPDATE SET connector_id = excluded.connector_id,"
            " id_tag = excluded.id_tag, parent_id_tag = excluded.parent_id_tag, expiry_date = excluded.expiry_date",
            (reservation.reservation_id, reservation.connector_id, reservation.id_tag, reservation.parent_id_tag,
             reservation.expiry_date),
        )

    def get(self, reservation_id: int) -> Reservation | None:
        if not fits_sqlite_integer(reservation_id):
            return None   # could never have been stored
        row = self._store.query_one("SELECT * FROM reservations WHERE reservation_id = ?", (reservation_id,))
        return None if row is None else Reservation(**dict(row))

    def delete(self, reservation_id: int) -> bool:
        if not fits_sqlite_integer(reservation_id):
            # CancelReservation(2**63) was answered InternalError (OverflowError from sqlite3;
            # found by the schema fuzz): no such reservation can exist, so nothing is deleted.
            return False
        return self._store.execute("DELETE FROM reservations WHERE reservation_id = ?",
                                   (reservation_id,)).rowcount > 0

    def list(self) -> builtins.list[Reservation]:
        rows = self._store.query("SELECT * FROM reservations ORDER BY reservation_id")
        return [Reservation(**dict(r)) for r in rows]
