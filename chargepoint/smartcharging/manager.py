"""The installed charging profiles: SetChargingProfile, ClearChargingProfile, GetCompositeSchedule.

The manager owns the set of installed profiles, applies the acceptance rules of
OCPP 1.6 §5.16 / §3.13 and the errata, persists every change through a
`ProfileRepository` (errata 3.37: profiles survive reboots) and tells
listeners (the enforcer) when the set changes. Evaluation is delegated to the
pure functions of `composite`; the only clock read is the injected `clock`,
used when a caller does not pass `now`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol

from chargepoint.smartcharging.composite import (
    DEFAULT_VOLTAGE_V,
    Limit,
    composite_schedule,
    limit_at,
    next_limit_change,
)
from chargepoint.smartcharging.model import (
    PURPOSES,
    ChargingProfile,
    ProfileRejected,
    RateUnit,
    TxInfo,
    from_json,
    parse_profile,
    to_json,
)

log = logging.getLogger("chargepoint.smartcharging")

SetStatus = Literal["Accepted", "Rejected"]
ClearStatus = Literal["Accepted", "Unknown"]
Listener = Callable[[], None]

# The [[connector]] max_current_a default of the configuration file.
DEFAULT_CONNECTOR_MAX_CURRENT_A = 32.0
# A GetCompositeSchedule longer than this is computed (and reported) for this long:
# a month of 48-period daily profiles is already ~1500 periods on the wire.
MAX_COMPOSITE_DURATION_S = 31 * 86_400

# ChargingScheduleAllowedChargingRateUnit values (§9.4.2, errata 3.88).
_UNIT_KEYWORD = {"A": "current", "W": "power"}

# The store keys profiles by chargingProfileId in an SQLite INTEGER (signed 64-bit); the
# schema's integer has no bound, so 2**63 arrives valid and would fail the durable write.
PROFILE_ID_MIN = -(2**63)
PROFILE_ID_MAX = 2**63 - 1


class ProfileRepository(Protocol):
    """Persistence of installed profiles; documents are `model.to_json` dicts."""

    def load_all(self) -> list[dict[str, Any]]: ...

    def save(self, profile_json: dict[str, Any]) -> None:
        """Insert or replace the profile with id profile_json["chargingProfileId"]."""

    def delete(self, profile_id: int) -> None: ...


class InMemoryProfileRepository:
    """A ProfileRepository in a dict (tests, and a charger without a store)."""

    def __init__(self) -> None:
        self.docs: dict[int, dict[str, Any]] = {}

    def load_all(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(doc) for doc in self.docs.values()]

    def save(self, profile_json: dict[str, Any]) -> None:
        self.docs[int(profile_json["chargingProfileId"])] = copy.deepcopy(profile_json)

    def delete(self, profile_id: int) -> None:
        self.docs.pop(profile_id, None)


class UnknownConnector(ValueError):
    """The connectorId does not exist: answer CALLERROR PropertyConstraintViolation (errata 3.39)."""


class SmartChargingManager:
    def __init__(
        self,
        *,
        connector_ids: Sequence[int],
        repository: ProfileRepository,
        max_stack_level: Callable[[], int],
        allowed_rate_units: Callable[[], Sequence[str]],
        max_periods: Callable[[], int],
        max_profiles_installed: Callable[[], int],
        clock: Callable[[], datetime],
        active_transaction: Callable[[int], TxInfo | None],
        voltage_v: float = DEFAULT_VOLTAGE_V,
        connector_phases: Mapping[int, int] | None = None,
        connector_max_current_a: Mapping[int, float] | None = None,
    ) -> None:
        self._connector_ids = tuple(connector_ids)
        self._repo = repository
        self._max_stack_level = max_stack_level
        self._allowed_rate_units = allowed_rate_units
        self._max_periods = max_periods
        self._max_profiles = max_profiles_installed
        self._clock = clock
        self._active_transaction = active_transaction
        self._voltage_v = voltage_v
        self._phases = dict(connector_phases or {})
        self._max_a = dict(connector_max_current_a or {})
        self._listeners: list[Listener] = []
        self._pending_remote: dict[int, ChargingProfile] = {}
        self._profiles: dict[int, ChargingProfile] = {}
        for doc in repository.load_all():
            try:
                profile = from_json(doc)
            except (ProfileRejected, KeyError, TypeError, ValueError) as exc:
                log.warning("stored charging profile skipped: %s", exc)
                continue
            self._profiles[profile.id] = profile
        log.info("%d charging profiles loaded", len(self._profiles))

    # ------------------------------------------------------------------ queries

    def profiles(self) -> list[ChargingProfile]:
        """The installed profiles, by id."""
        return [self._profiles[k] for k in sorted(self._profiles)]

    def is_known_connector(self, connector_id: int) -> bool:
        return connector_id == 0 or connector_id in self._connector_ids

    def add_listener(self, callback: Listener) -> None:
        """`callback()` runs after every change of the installed set or of the running transactions
        (a SetChargingProfile identical to the installed profile it replaces is no change)."""
        self._listeners.append(callback)

    # ------------------------------------------------------------------ SetChargingProfile (§5.16)

    def set_profile(self, connector_id: int, profile_payload: dict[str, Any]) -> SetStatus:
        """SetChargingProfile.req -> status. Raises UnknownConnector for a connectorId that does not exist."""
        if not self.is_known_connector(connector_id):
            raise UnknownConnector(f"unknown connectorId {connector_id}")
        try:
            profile = parse_profile(profile_payload, connector_id=connector_id)
            self._check_capabilities(profile)
            if profile.purpose == "TxProfile":
                tx = self._active_transaction(connector_id)
                if tx is None:
                    # §3.13.1 / §5.16.4: no TxProfile without an active transaction.
                    raise ProfileRejected(f"TxProfile but no transaction on connector {connector_id}")
                if profile.transaction_id is not None and profile.transaction_id != tx.transaction_id:
                    raise ProfileRejected(f"TxProfile for transaction {profile.transaction_id}, "
                                          f"connector {connector_id} runs {tx.transaction_id}")
            replaced = self._replaced_by(profile)
            self._check_room(len(replaced))
        except ProfileRejected as exc:
            profile_id = profile_payload.get("chargingProfileId") if isinstance(profile_payload, dict) else None
            log.info("SetChargingProfile id=%s on connector %d rejected: %s", profile_id, connector_id, exc.reason)
            return "Rejected"
        if replaced == {profile.id} and self._profiles.get(profile.id) == profile:
            # The same profile sent again (central systems re-send their defaults on every
            # reconnect): the installed set mirrors what the store has committed (every change
            # is saved before it is installed, and removed from memory only once deleted), so
            # this very profile is already durably stored (errata 3.37) and nothing changes:
            # no write, nothing to re-evaluate.
            log.info("charging profile %d installed: %s stackLevel %d on connector %d (unchanged)",
                     profile.id, profile.purpose, profile.stack_level, connector_id)
            return "Accepted"
        self._install(profile, replaced)
        if replaced:
            log.info("charging profile %d installed: %s stackLevel %d on connector %d (replaced %s)", profile.id,
                     profile.purpose, profile.stack_level, connector_id, sorted(replaced))
        else:
            log.info("charging profile %d installed: %s stackLevel %d on connector %d", profile.id,
                     profile.purpose, profile.stack_level, connector_id)
        self._notify()
        return "Accepted"

    def _check_capabilities(self, profile: ChargingProfile) -> None:
        if not PROFILE_ID_MIN <= profile.id <= PROFILE_ID_MAX:
            # Rejected, not stored: the write raised OverflowError (answered InternalError;
            # found by the schema fuzz), and for a remote start only once the cable came.
            raise ProfileRejected(f"chargingProfileId {profile.id} does not fit the store's 64-bit key")
        max_level = self._max_stack_level()
        if profile.stack_level > max_level:
            raise ProfileRejected(f"stackLevel {profile.stack_level} above ChargeProfileMaxStackLevel {max_level}")
        allowed = {u.strip().lower() for u in self._allowed_rate_units()}
        if _UNIT_KEYWORD[profile.schedule.rate_unit] not in allowed:
            raise ProfileRejected(f"chargingRateUnit {profile.schedule.rate_unit} not in "
                                  "ChargingScheduleAllowedChargingRateUnit")
        max_periods = self._max_periods()
        if len(profile.schedule.periods) > max_periods:
            raise ProfileRejected(f"{len(profile.schedule.periods)} periods, ChargingScheduleMaxPeriods "
                                  f"is {max_periods}")

    def _replaced_by(self, new: ChargingProfile) -> set[int]:
        # §3.13.2, §5.16.3/4: the same chargingProfileId, or the same stackLevel
        # and purpose, is replaced. The connector is part of the key: a
        # connector-specific TxDefaultProfile does not remove the connector-0
        # one (§3.13.1), and TxProfiles of two connectors are two transactions.
        key = (new.connector_id, new.purpose, new.stack_level)
        return {p.id for p in self._profiles.values()
                if p.id == new.id or (p.connector_id, p.purpose, p.stack_level) == key}

    def _check_room(self, freed: int) -> None:
        limit = self._max_profiles()
        if len(self._profiles) - freed + 1 > limit:
            raise ProfileRejected(f"MaxChargingProfilesInstalled ({limit}) reached")

    def _install(self, profile: ChargingProfile, replaced: set[int]) -> None:
        # Save first: a power cut between the two steps leaves an extra
        # profile rather than none (the evaluation orders duplicates by id).
        self._repo.save(to_json(profile))
        for old in replaced - {profile.id}:
            self._repo.delete(old)
        for old in replaced:
            self._profiles.pop(old, None)
        self._profiles[profile.id] = profile

    # ------------------------------------------------------------------ ClearChargingProfile (§5.5)

    def clear_profile(self, id: int | None = None, connector_id: int | None = None,  # "id": the OCPP field name
                      purpose: str | None = None, stack_level: int | None = None) -> ClearStatus:
        """ClearChargingProfile.req -> status (errata 3.25 / 3.26).

        An id selects that profile and the other fields are ignored; otherwise
        the given fields must all match (logical AND); no field clears all.
        """
        if purpose is not None and purpose not in PURPOSES:
            return "Unknown"
        if id is not None:
            doomed = [p for p in self._profiles.values() if p.id == id]
        else:
            doomed = [p for p in self._profiles.values()
                      if (connector_id is None or p.connector_id == connector_id)
                      and (purpose is None or p.purpose == purpose)
                      and (stack_level is None or p.stack_level == stack_level)]
        if not doomed:
            log.info("ClearChargingProfile id=%s connector=%s purpose=%s stackLevel=%s: none matched",
                     id, connector_id, purpose, stack_level)
            return "Unknown"
        self._remove(doomed)
        log.info("ClearChargingProfile cleared %s", sorted(p.id for p in doomed))
        self._notify()
        return "Accepted"

    def _remove(self, profiles: Sequence[ChargingProfile]) -> None:
        for profile in profiles:
            self._repo.delete(profile.id)
            self._profiles.pop(profile.id, None)

    # ------------------------------------------------------------------ GetCompositeSchedule (§5.7)

    def composite(self, connector_id: int, duration_s: int, rate_unit: RateUnit | None = None,
                  now: datetime | None = None) -> dict[str, Any] | None:
        """The GetCompositeSchedule.conf payload (status Accepted), or None to answer Rejected.

        Starts at `now` (floored to the second; errata 3.28/3.29). Intervals
        without any profile report the connector maximum (a local limit, §5.7).
        """
        if not self.is_known_connector(connector_id) or duration_s <= 0:
            return None
        if rate_unit is None:
            allowed = {u.strip().lower() for u in self._allowed_rate_units()}
            rate_unit = "A" if "current" in allowed or "power" not in allowed else "W"
        if rate_unit not in _UNIT_KEYWORD:
            raise ValueError(f"chargingRateUnit {rate_unit!r}")
        start = self._clock() if now is None else now
        if connector_id == 0:
            phases = max((self._phases_of(c) for c in self._connector_ids), default=3)
            max_a = sum(self._max_a_of(c) for c in self._connector_ids) or DEFAULT_CONNECTOR_MAX_CURRENT_A
            tx = None
        else:
            phases = self._phases_of(connector_id)
            max_a = self._max_a_of(connector_id)
            tx = self._active_transaction(connector_id)
        schedule = composite_schedule(
            self._profiles.values(), connector_id=connector_id, start=start,
            duration_s=min(duration_s, MAX_COMPOSITE_DURATION_S), rate_unit=rate_unit, transaction=tx,
            voltage_v=self._voltage_v, connector_phases=phases, connector_max_current_a=max_a)
        return schedule.to_conf()

    def _phases_of(self, connector_id: int) -> int:
        return self._phases.get(connector_id, 3)

    def _max_a_of(self, connector_id: int) -> float:
        return self._max_a.get(connector_id, DEFAULT_CONNECTOR_MAX_CURRENT_A)

    # ------------------------------------------------------------------ enforcement

    def _cp_max_divisor(self, connector_id: int) -> int:
        # §3.13.3: ChargePointMaxProfile limits all connectors combined; share it
        # equally between the connectors that run a transaction (this one included).
        busy = {c for c in self._connector_ids if self._active_transaction(c) is not None}
        busy.add(connector_id)
        return len(busy)

    def current_limit(self, connector_id: int, now: datetime | None = None) -> Limit | None:
        """The profile limit to enforce on the connector now; None: no profile limits it."""
        at = self._clock() if now is None else now
        return limit_at(self._profiles.values(), at, connector_id=connector_id,
                        transaction=self._active_transaction(connector_id), voltage_v=self._voltage_v,
                        phases=self._phases_of(connector_id), cp_max_divisor=self._cp_max_divisor(connector_id))

    def current_limit_a(self, connector_id: int, now: datetime | None = None) -> tuple[float | None, str]:
        """(limit per phase in A, or None when unconstrained; its source, e.g. "TxProfile#12")."""
        found = self.current_limit(connector_id, now)
        if found is None:
            return None, "none"
        return found.current_a, found.source

    def next_change_at(self, connector_id: int, now: datetime | None = None) -> datetime | None:
        """When current_limit_a next changes by the clock alone; None: not as long as nothing else changes.

        Changes of the installed set or of transactions are announced to listeners instead.
        """
        at = self._clock() if now is None else now
        return next_limit_change(self._profiles.values(), at, connector_id=connector_id,
                                 transaction=self._active_transaction(connector_id), voltage_v=self._voltage_v,
                                 phases=self._phases_of(connector_id),
                                 cp_max_divisor=self._cp_max_divisor(connector_id))

    # ------------------------------------------------------------------ transactions

    def remote_start_profile(self, connector_id: int, profile_payload: dict[str, Any]) -> SetStatus:
        """Validate RemoteStartTransaction.req's chargingProfile and hold it for the coming transaction.

        §5.11 / §6.33: its purpose must be TxProfile; errata 3.41: no
        transactionId. On Accepted the profile is installed by
        on_transaction_started (errata 3.42: it applies to the new transaction).
        """
        try:
            if connector_id not in self._connector_ids:
                raise ProfileRejected(f"connectorId {connector_id} is not a connector")
            profile = parse_profile(profile_payload, connector_id=connector_id)
            if profile.purpose != "TxProfile":
                raise ProfileRejected(f"purpose {profile.purpose}, RemoteStartTransaction needs TxProfile")
            if profile.transaction_id is not None:
                raise ProfileRejected("transactionId must not be set in RemoteStartTransaction")
            self._check_capabilities(profile)
            freed = {p.id for p in self._profiles.values() if p.id == profile.id or
                     (p.purpose == "TxProfile" and p.connector_id == connector_id)}
            self._check_room(len(freed))
        except ProfileRejected as exc:
            log.info("RemoteStartTransaction profile on connector %d rejected: %s", connector_id, exc.reason)
            return "Rejected"
        self._pending_remote[connector_id] = profile
        return "Accepted"

    def discard_remote_start_profile(self, connector_id: int) -> None:
        """The remote start did not lead to a transaction: drop its held profile."""
        self._pending_remote.pop(connector_id, None)

    def on_transaction_started(self, connector_id: int) -> None:
        """A NEW transaction started on the connector (not one resumed after a reboot).

        TxProfiles left from an earlier transaction are removed (§7.10: they
        ceased with it) and a profile held by remote_start_profile is installed.
        """
        stale = [p for p in self._profiles.values() if p.purpose == "TxProfile" and p.connector_id == connector_id]
        if stale:
            self._remove(stale)
            log.info("stale TxProfiles %s on connector %d removed", sorted(p.id for p in stale), connector_id)
        pending = self._pending_remote.pop(connector_id, None)
        if pending is not None:
            self._install(pending, self._replaced_by(pending))
            log.info("RemoteStartTransaction TxProfile %d installed on connector %d", pending.id, connector_id)
        self._notify()

    def on_transaction_ended(self, connector_id: int, transaction_id: int) -> None:
        """§7.10: a TxProfile ceases to be valid when its transaction terminates; remove them."""
        ended = [p for p in self._profiles.values() if p.purpose == "TxProfile" and p.connector_id == connector_id]
        if ended:
            self._remove(ended)
            log.info("transaction %d ended: TxProfiles %s removed", transaction_id, sorted(p.id for p in ended))
        self._notify()

    # ------------------------------------------------------------------ listeners

    def _notify(self) -> None:
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:
                log.exception("smart-charging listener failed")
