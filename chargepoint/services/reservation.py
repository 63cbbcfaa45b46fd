"""Reservations (Reservation profile): ReserveNow and CancelReservation.

OCPP 1.6 §3.11, §5.13 (ReserveNow, with errata 4.12), §5.1 (CancelReservation),
§7.40 (ReservationStatus), §9.3.1 ReserveConnectorZeroSupported, §4.8
(reservationId in StartTransaction.req), §4.9 (Reserved).

- ReserveNow on a connector: Faulted / Unavailable when the connector (or the
  charge point) is; Occupied when it has a transaction, an EV plugged in or an
  authorization waiting for the plug, or is reserved by another reservation
  (§5.13: "reserved for the same or another idTag"); Rejected for an unknown
  connector, an expiryDate already past, or connector 0 when
  ReserveConnectorZeroSupported is false; else Accepted and the connector shows
  Reserved. A known reservationId replaces that reservation (§5.13).
- Connector 0 ("any connector", §5.13): no connector is picked, but one must
  stay free for the idTag while the reservation is valid. Connectors that
  could still serve it are "holdable" (no transaction, no authorization waiting,
  not Faulted or Unavailable, not reserved on their own); when there are no
  more of them than connector-0 reservations, they are all held: shown Reserved
  and refused to other idTags.
- A reserved connector starts only for the reserved idTag or one of its group:
  the incoming idTag or its parentIdTag matches the reservation's idTag or
  parentIdTag (§5.13; idTags are case-insensitive, §7.28). The transaction
  service asks `reservation_for(connector_id, id_tag)`, calls
  `consume(reservation_id)` when the transaction is authorized (§4.9 G2) and
  puts the reservationId in StartTransaction.req (§4.8).
- A reservation ends when used, when expiryDate is reached (the connector is
  Available again and its StatusNotification follows, §5.13), when it is
  cancelled, and when its connector (or for connector 0: the charge point, or
  every connector) becomes Faulted or Unavailable (§5.13 (3)).
- Reservations persist in the store (store.reservations) and survive a restart.
  Expiry needs a synchronised clock: until then none is expired.
- Expiry is not polled: the loop sleeps until the earliest expiryDate (converted to the
  monotonic clock when it goes to sleep) and is woken when the set of reservations
  changes and when the clock is synchronised or stepped by us (Clock.add_listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chargepoint.evse.controller import StatusChanged
from chargepoint.store.profiles import Reservation, fits_sqlite_integer

if TYPE_CHECKING:
    from chargepoint.app import ChargePointApp

log = logging.getLogger("chargepoint.reservation")
# The idTag and expiryDate of ReserveNow are the central system's text: logged with %r, so a
# CR/LF in an idTag cannot forge a log line (one line per event, docs/ARCHITECTURE.md).

# The wall clock can also be stepped by something other than this daemon (another time
# service, an operator): that has no event, so a sleep towards an expiryDate re-reads the
# clock at least this often. Only while a reservation is waiting to expire.
WALL_CLOCK_RECHECK_S = 5.0

ACCEPTED = "Accepted"
FAULTED = "Faulted"
OCCUPIED = "Occupied"
REJECTED = "Rejected"
UNAVAILABLE = "Unavailable"


# --------------------------------------------------------------------------- pure rules


@dataclass(frozen=True)
class ConnectorView:
    """What the reservation rules need to know of one connector now."""

    connector_id: int
    status: str | None            # the derived OCPP status (None before the first step)
    plugged: bool = False
    transaction: bool = False     # a transaction in progress
    pending_id_tag: str | None = None   # an idTag authorized and waiting for the plug

    @property
    def out_of_service(self) -> bool:
        return self.status in (FAULTED, UNAVAILABLE)

    def holdable(self) -> bool:
        """Could still serve a connector-0 reservation."""
        return not self.out_of_service and not self.transaction and self.pending_id_tag is None

    def idle(self) -> bool:
        """Free for a new reservation now: nobody is using it."""
        return self.holdable() and not self.plugged


def parse_expiry(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def is_expired(reservation: Reservation, now: datetime | None) -> bool:
    """Past its expiryDate; never without a synchronised clock (`now` None)."""
    expiry = parse_expiry(reservation.expiry_date)
    return now is not None and expiry is not None and expiry <= now


def matches(reservation: Reservation, id_tag: str, parent_id_tag: str | None) -> bool:
    """§5.13: the incoming idTag or its parentIdTag matches the reservation's idTag or parentIdTag."""
    incoming = {id_tag.casefold()} | ({parent_id_tag.casefold()} if parent_id_tag else set())
    reserved = {reservation.id_tag.casefold()}
    if reservation.parent_id_tag:
        reserved.add(reservation.parent_id_tag.casefold())
    return bool(incoming & reserved)


def _specific(reservations: Iterable[Reservation]) -> dict[int, Reservation]:
    return {r.connector_id: r for r in reservations if r.connector_id != 0}


def _zero(reservations: Iterable[Reservation]) -> list[Reservation]:
    return [r for r in reservations if r.connector_id == 0]


def held_connectors(views: Mapping[int, ConnectorView], reservations: Iterable[Reservation]) -> set[int]:
    """The connectors to show Reserved: each specific reservation's, plus the holdable ones when
    connector-0 reservations need all of them (§5.13: one stays available for the idTag)."""
    items = list(reservations)
    specific = _specific(items)
    held = {cid for cid in specific if cid in views}
    zero_count = len(_zero(items))
    if zero_count:
        holdable = {cid for cid, v in views.items() if cid not in specific and v.holdable()}
        if len(holdable) <= zero_count:
            held |= holdable
    return held


def reserve_status(connector_id: int, views: Mapping[int, ConnectorView], reservations: Iterable[Reservation], *,
                   charge_point_operative: bool, zero_supported: bool) -> str:
    """ReserveNow.conf status (§5.13, §7.40) for a new reservation on `connector_id`.

    `reservations` are the ones in force, without one the request replaces."""
    items = list(reservations)
    specific = _specific(items)
    zero_count = len(_zero(items))
    if connector_id == 0:
        if not zero_supported:
            return REJECTED
        if not charge_point_operative:
            return UNAVAILABLE
        idle = [cid for cid, v in views.items() if cid not in specific and v.idle()]
        if len(idle) > zero_count:
            return ACCEPTED
        if views and all(v.status == FAULTED for v in views.values()):
            return FAULTED
        if views and all(v.out_of_service for v in views.values()):
            return UNAVAILABLE
        return OCCUPIED
    view = views.get(connector_id)
    if view is None:
        return REJECTED
    if view.status == FAULTED:
        return FAULTED
    if view.status == UNAVAILABLE or not charge_point_operative:
        return UNAVAILABLE
    if connector_id in specific or not view.idle():
        return OCCUPIED
    # Taking this connector must leave enough for the connector-0 reservations.
    others = [cid for cid, v in views.items() if cid != connector_id and cid not in specific and v.holdable()]
    if len(others) < zero_count:
        return OCCUPIED
    return ACCEPTED


def reservation_for(connector_id: int, id_tag: str, parent_id_tag: str | None,
                    reservations: Iterable[Reservation]) -> Reservation | None:
    """The reservation a start of `id_tag` on `connector_id` uses: the connector's own if it
    matches, else a matching connector-0 reservation."""
    items = list(reservations)
    own = _specific(items).get(connector_id)
    if own is not None:
        return own if matches(own, id_tag, parent_id_tag) else None
    return next((r for r in _zero(items) if matches(r, id_tag, parent_id_tag)), None)


def blocks(connector_id: int, id_tag: str, parent_id_tag: str | None, views: Mapping[int, ConnectorView],
           reservations: Iterable[Reservation]) -> bool:
    """True when a reservation forbids `id_tag` to start on `connector_id` (§5.13)."""
    items = list(reservations)
    if reservation_for(connector_id, id_tag, parent_id_tag, items) is not None:
        return False
    specific = _specific(items)
    if connector_id in specific:
        return True
    zero_count = len(_zero(items))
    if not zero_count:
        return False
    others = [cid for cid, v in views.items() if cid != connector_id and cid not in specific and v.holdable()]
    return len(others) < zero_count


# --------------------------------------------------------------------------- the service


class ReservationService:
    """app.reservations: ReserveNow / CancelReservation, and the rules the transaction service asks."""

    def __init__(self, app: ChargePointApp) -> None:
        self.app = app
        app.on("ReserveNow", self.on_reserve_now)
        app.on("CancelReservation", self.on_cancel_reservation)
        app.add_connector_listener(self._on_connector_event)
        app.add_connector_status_contributor(self._connector_status)
        app.add_status_contributor(self._station_status)
        self._held: set[int] = set()
        # The expiry loop's next deadline may have changed: a reservation was made, replaced,
        # used or cancelled, or the clock was synchronised / stepped.
        self._wake = asyncio.Event()
        app.clock.add_listener(self._wake.set)
        transactions = app.transactions
        if transactions is not None and hasattr(transactions, "add_listener"):
            # A start or stop changes which connectors can serve a connector-0 reservation.
            transactions.add_listener(lambda _event: self._wake.set())
        # Restart: the stored reservations hold their connectors again before the first step.
        for cid in _specific(self.reservations()):
            if cid in app.controllers:
                app.controllers[cid].set_reserved(True)
                self._held.add(cid)

    # ----------------------------------------------------------------- queries (transaction service)

    def reservations(self) -> list[Reservation]:
        return self.app.store.reservations.list()

    def reservation_for(self, connector_id: int, id_tag: str, parent_id_tag: str | None = None) -> int | None:
        """The reservationId a transaction of `id_tag` on this connector fulfils, or None."""
        found = reservation_for(connector_id, id_tag, parent_id_tag or self._parent_of(id_tag), self._valid())
        return None if found is None else found.reservation_id

    def blocks(self, connector_id: int, id_tag: str, parent_id_tag: str | None = None) -> bool:
        """True when a reservation refuses `id_tag` on this connector."""
        return blocks(connector_id, id_tag, parent_id_tag or self._parent_of(id_tag), self._views(),
                      self._valid())

    def is_reserved(self, connector_id: int) -> bool:
        return connector_id in self._held

    def consume(self, reservation_id: int) -> None:
        """The reservation's idTag started (or is starting) a transaction: it ends (§5.13 (1))."""
        if self.app.store.reservations.delete(reservation_id):
            log.info("reservation %d used", reservation_id)
            self._wake.set()
        self.refresh()

    # ----------------------------------------------------------------- OCPP

    async def on_reserve_now(self, payload: dict[str, Any]) -> dict[str, Any]:
        connector_id = int(payload["connectorId"])
        reservation_id = int(payload["reservationId"])
        expiry_text = str(payload["expiryDate"])
        candidate = Reservation(reservation_id=reservation_id, connector_id=connector_id,
                                id_tag=str(payload["idTag"]), parent_id_tag=payload.get("parentIdTag") or None,
                                expiry_date=expiry_text)
        if not fits_sqlite_integer(reservation_id):
            # The 1.6 schema puts no bound on reservationId, but the store (SQLite INTEGER, 64
            # bits signed) cannot hold this one, so the reservation could never be kept across
            # a restart nor found again: refused (§7.40 Rejected). It was answered InternalError
            # (the store's ValueError; found by the schema fuzz).
            log.info("ReserveNow %d: reservationId beyond 64 bits, cannot be stored: Rejected", reservation_id)
            return {"status": REJECTED}
        now = self._now()
        if parse_expiry(expiry_text) is None or is_expired(candidate, now):
            log.info("ReserveNow %d: expiryDate %r already past: Rejected", reservation_id, expiry_text)
            return {"status": REJECTED}
        others = [r for r in self._valid() if r.reservation_id != reservation_id]
        status = reserve_status(connector_id, self._views(), others,
                                charge_point_operative=self._charge_point_operative(),
                                zero_supported=self._zero_supported())
        log.info("ReserveNow %d for %r on connector %d until %r: %s", reservation_id, candidate.id_tag,
                 connector_id, expiry_text, status)
        if status == ACCEPTED:
            self.app.store.reservations.upsert(candidate)
            self._wake.set()   # the expiry loop may sleep towards a later expiryDate, or none
            self.refresh()
        return {"status": status}

    async def on_cancel_reservation(self, payload: dict[str, Any]) -> dict[str, Any]:
        reservation_id = int(payload["reservationId"])
        if not self.app.store.reservations.delete(reservation_id):
            return {"status": REJECTED}
        log.info("reservation %d cancelled", reservation_id)
        self._wake.set()
        self.refresh()
        return {"status": ACCEPTED}

    # ----------------------------------------------------------------- upkeep

    def refresh(self) -> None:
        """End expired / out-of-service reservations and set the Reserved flags (idempotent)."""
        store = self.app.store
        views = self._views()
        now = self._now()
        all_out = bool(views) and all(v.out_of_service for v in views.values())
        for r in self.reservations():
            why = None
            if is_expired(r, now):
                why = "expired"
            elif r.connector_id == 0 and (not self._charge_point_operative() or all_out):
                why = "charge point unavailable"
            elif r.connector_id != 0 and r.connector_id not in views:
                why = "unknown connector"
            elif r.connector_id != 0 and views[r.connector_id].out_of_service:
                why = f"connector {views[r.connector_id].status}"
            if why is not None and store.reservations.delete(r.reservation_id):
                log.info("reservation %d (connector %d) ended: %s", r.reservation_id, r.connector_id, why)
        held = held_connectors(views, self.reservations())
        for cid, controller in self.app.controllers.items():
            controller.set_reserved(cid in held)
        if held != self._held:
            log.info("connectors held by reservations: %s", sorted(held) or "none")
        self._held = held

    def _on_connector_event(self, event: Any) -> None:
        if isinstance(event, StatusChanged):
            self.refresh()

    def wake(self) -> None:
        """Something refresh() depends on changed without a connector status change (the charge
        point's availability): look again now."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            self.refresh()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_expiry_in_s()):
                    await self._wake.wait()

    def _next_expiry_in_s(self) -> float | None:
        """Seconds until the earliest expiryDate (§5.13), by the wall clock as it is now; None
        when there is nothing to expire or no synchronised clock to expire it by (a sync
        wakes the loop)."""
        if not self.app.clock.synced:
            return None
        expiries = [e.timestamp() for r in self.reservations() if (e := parse_expiry(r.expiry_date)) is not None]
        if not expiries:
            return None
        return max(0.0, min(min(expiries) - self.app.clock.wall_s(), WALL_CLOCK_RECHECK_S))

    # ----------------------------------------------------------------- helpers

    def _valid(self) -> list[Reservation]:
        now = self._now()
        return [r for r in self.reservations() if not is_expired(r, now)]

    def _now(self) -> datetime | None:
        return self.app.clock.now() if self.app.clock.synced else None

    def _zero_supported(self) -> bool:
        config = self.app.config
        return config.has("ReserveConnectorZeroSupported") and config.get_bool("ReserveConnectorZeroSupported")

    def _charge_point_operative(self) -> bool:
        return self.app.store.kv_get("availability", "0", "Operative") != "Inoperative"

    def _parent_of(self, id_tag: str) -> str | None:
        auth = self.app.auth
        parent_of = getattr(auth, "parent_of", None) if auth is not None else None
        return parent_of(id_tag) if parent_of is not None else None

    def _views(self) -> dict[int, ConnectorView]:
        transactions = self.app.transactions
        views: dict[int, ConnectorView] = {}
        for cid, controller in self.app.controllers.items():
            report = controller.status
            active = transactions.active(cid) is not None if transactions is not None else False
            pending = None
            if transactions is not None and hasattr(transactions, "pending_id_tag"):
                pending = transactions.pending_id_tag(cid)
            views[cid] = ConnectorView(cid, None if report is None else str(report.status),
                                       plugged=controller.plugged, transaction=active, pending_id_tag=pending)
        return views

    def _connector_status(self, connector_id: int, entry: dict[str, Any]) -> None:
        own = _specific(self.reservations()).get(connector_id)
        if own is not None:
            entry["reservation"] = {"reservation_id": own.reservation_id, "id_tag": own.id_tag,
                                    "expiry_date": own.expiry_date}

    def _station_status(self, result: dict[str, Any]) -> None:
        result["reservations"] = [
            {"reservation_id": r.reservation_id, "connector_id": r.connector_id, "id_tag": r.id_tag,
             "expiry_date": r.expiry_date} for r in self.reservations()]
