"""SmartChargingManager: SetChargingProfile / ClearChargingProfile / GetCompositeSchedule rules (OCPP 1.6 §5.5,
§5.7, §5.11, §5.16, §3.13 and errata), persistence through a real SQLite store, and the enforcer's view."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chargepoint.smartcharging.manager import (
    MAX_COMPOSITE_DURATION_S,
    InMemoryProfileRepository,
    ProfileRepository,
    SmartChargingManager,
    UnknownConnector,
)
from chargepoint.smartcharging.model import RateUnit, TxInfo, format_datetime
from chargepoint.store import Store

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
UNITS: tuple[RateUnit, ...] = ("A", "W")


@dataclass
class Station:
    """The manager's surroundings: configuration keys, running transactions, the clock."""

    config: dict[str, Any] = field(default_factory=lambda: {
        "ChargeProfileMaxStackLevel": 3,
        "ChargingScheduleAllowedChargingRateUnit": ["Current", "Power"],
        "ChargingScheduleMaxPeriods": 5,
        "MaxChargingProfilesInstalled": 6,
    })
    transactions: dict[int, TxInfo] = field(default_factory=dict)
    now: datetime = NOW
    changes: int = 0

    def manager(self, repository: ProfileRepository | None = None) -> SmartChargingManager:
        manager = SmartChargingManager(
            connector_ids=[1, 2],
            repository=repository if repository is not None else InMemoryProfileRepository(),
            max_stack_level=lambda: int(self.config["ChargeProfileMaxStackLevel"]),
            allowed_rate_units=lambda: list(self.config["ChargingScheduleAllowedChargingRateUnit"]),
            max_periods=lambda: int(self.config["ChargingScheduleMaxPeriods"]),
            max_profiles_installed=lambda: int(self.config["MaxChargingProfilesInstalled"]),
            clock=lambda: self.now,
            active_transaction=self.transactions.get,
            connector_phases={1: 3, 2: 1},
            connector_max_current_a={1: 32.0, 2: 16.0},
        )
        manager.add_listener(self._changed)
        return manager

    def _changed(self) -> None:
        self.changes += 1


def profile(pid: int, purpose: str = "TxDefaultProfile", limits: list[float] | None = None, *, stack: int = 0,
            unit: str = "A", kind: str = "Relative", transaction_id: int | None = None, step_s: int = 600,
            start: datetime | None = None, duration: int | None = None) -> dict[str, Any]:
    periods = [{"startPeriod": i * step_s, "limit": Decimal(str(v))} for i, v in enumerate(limits or [16.0])]
    schedule: dict[str, Any] = {"chargingRateUnit": unit, "chargingSchedulePeriod": periods}
    if kind != "Relative":
        schedule["startSchedule"] = format_datetime(start or NOW)
    if duration is not None:
        schedule["duration"] = duration
    doc: dict[str, Any] = {"chargingProfileId": pid, "stackLevel": stack, "chargingProfilePurpose": purpose,
                           "chargingProfileKind": kind, "chargingSchedule": schedule}
    if transaction_id is not None:
        doc["transactionId"] = transaction_id
    return doc


def limits(manager: SmartChargingManager, connector_id: int = 1, duration_s: int = 3600,
           unit: RateUnit | None = "A") -> list[tuple[int, float]]:
    conf = manager.composite(connector_id, duration_s, unit, NOW)
    assert conf is not None
    return [(p["startPeriod"], p["limit"]) for p in conf["chargingSchedule"]["chargingSchedulePeriod"]]


@pytest.fixture
def station() -> Station:
    return Station()


# ---------------------------------------------------------------------- SetChargingProfile


def test_tx_profile_without_a_transaction_is_rejected_3_13_1(station: Station) -> None:
    manager = station.manager()
    assert manager.set_profile(1, profile(1, "TxProfile")) == "Rejected"
    assert manager.profiles() == [] and station.changes == 0


def test_tx_profile_needs_the_running_transaction_id_when_it_names_one(station: Station) -> None:
    station.transactions[1] = TxInfo(42, NOW - timedelta(minutes=5))
    manager = station.manager()
    assert manager.set_profile(1, profile(1, "TxProfile", transaction_id=41)) == "Rejected"
    assert manager.set_profile(2, profile(1, "TxProfile")) == "Rejected"  # no transaction on connector 2
    assert manager.set_profile(1, profile(1, "TxProfile", [10], transaction_id=42)) == "Accepted"
    assert manager.set_profile(1, profile(2, "TxProfile", [8], stack=1)) == "Accepted"
    assert limits(manager) == [(0, 8.0)]


@pytest.mark.parametrize(("change", "payload", "connector"), [
    ("stack level above ChargeProfileMaxStackLevel", profile(1, stack=4), 1),
    ("W not allowed when only Current is", profile(1, unit="W"), 1),
    ("more periods than ChargingScheduleMaxPeriods", profile(1, limits=[6, 7, 8, 9, 10, 11]), 1),
    ("ChargePointMaxProfile on a connector", profile(1, "ChargePointMaxProfile"), 1),
    ("TxProfile on connector 0", profile(1, "TxProfile"), 0),
    ("first period not at 0", {**profile(1), "chargingSchedule": {
        "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 5, "limit": 6}]}}, 1),
])
def test_set_profile_rejections(station: Station, change: str, payload: dict[str, Any], connector: int) -> None:
    station.config["ChargingScheduleAllowedChargingRateUnit"] = ["Current"]
    station.transactions[1] = TxInfo(1, NOW)
    manager = station.manager()
    assert manager.set_profile(connector, payload) == "Rejected", change
    assert manager.profiles() == []


def test_unknown_connector_raises_for_a_callerror_errata_3_39(station: Station) -> None:
    with pytest.raises(UnknownConnector):
        station.manager().set_profile(3, profile(1))


def test_same_id_replaces_whatever_its_purpose_or_connector_5_16_3(station: Station) -> None:
    manager = station.manager()
    assert manager.set_profile(0, profile(7, "ChargePointMaxProfile", [20])) == "Accepted"
    assert manager.set_profile(1, profile(7, "TxDefaultProfile", [10], stack=2)) == "Accepted"
    assert [(p.id, p.purpose, p.connector_id) for p in manager.profiles()] == [(7, "TxDefaultProfile", 1)]
    assert limits(manager) == [(0, 10.0)]


def test_same_purpose_and_stack_level_on_the_same_connector_replaces_3_13_2(station: Station) -> None:
    manager = station.manager()
    assert manager.set_profile(1, profile(1, stack=1, limits=[10])) == "Accepted"
    assert manager.set_profile(1, profile(2, stack=1, limits=[12])) == "Accepted"
    assert [p.id for p in manager.profiles()] == [2]
    # A connector-specific TxDefaultProfile does not remove the connector-0 one (§3.13.1).
    assert manager.set_profile(0, profile(3, stack=1, limits=[6])) == "Accepted"
    assert [p.id for p in manager.profiles()] == [2, 3]
    assert limits(manager, 1) == [(0, 12.0)]
    assert limits(manager, 2) == [(0, 6.0)]


def test_max_profiles_installed_counts_replacements_as_free(station: Station) -> None:
    station.config["MaxChargingProfilesInstalled"] = 2
    manager = station.manager()
    assert manager.set_profile(0, profile(1, stack=0)) == "Accepted"
    assert manager.set_profile(0, profile(2, stack=1)) == "Accepted"
    assert manager.set_profile(0, profile(3, stack=2)) == "Rejected"
    assert manager.set_profile(0, profile(3, stack=1, limits=[9])) == "Accepted"  # replaces id 2
    assert manager.set_profile(0, profile(1, stack=3, limits=[7])) == "Accepted"  # replaces id 1
    assert [(p.id, p.stack_level) for p in manager.profiles()] == [(1, 3), (3, 1)]


def test_float_and_decimal_limits_are_accepted_alike(station: Station) -> None:
    manager = station.manager()
    as_float = profile(1, limits=[13.2])
    as_float["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] = 13.2
    assert manager.set_profile(1, as_float) == "Accepted"
    assert manager.set_profile(2, profile(2, limits=[13.2])) == "Accepted"
    assert limits(manager, 1) == [(0, 13.2)] and limits(manager, 2) == [(0, 13.2)]


# ---------------------------------------------------------------------- ClearChargingProfile


def installed(station: Station) -> SmartChargingManager:
    station.transactions[1] = TxInfo(42, NOW)
    manager = station.manager()
    for connector, payload in ((0, profile(1, "ChargePointMaxProfile", [32], stack=0)),
                               (0, profile(2, "TxDefaultProfile", [16], stack=0)),
                               (0, profile(3, "TxDefaultProfile", [12], stack=1)),
                               (1, profile(4, "TxDefaultProfile", [10], stack=1)),
                               (1, profile(5, "TxProfile", [8], stack=1))):
        assert manager.set_profile(connector, payload) == "Accepted"
    return manager


@pytest.mark.parametrize(("criteria", "left"), [
    ({"id": 4}, [1, 2, 3, 5]),
    ({"id": 4, "connector_id": 2, "purpose": "TxProfile"}, [1, 2, 3, 5]),  # id given: the rest is ignored
    ({"purpose": "TxDefaultProfile", "stack_level": 1}, [1, 2, 5]),
    ({"connector_id": 1}, [1, 2, 3]),
    ({"connector_id": 0, "purpose": "TxDefaultProfile"}, [1, 4, 5]),
    ({"stack_level": 0}, [3, 4, 5]),
    ({}, []),
])
def test_clear_matches_all_given_fields_errata_3_25_3_26(station: Station, criteria: dict[str, Any],
                                                         left: list[int]) -> None:
    manager = installed(station)
    before = station.changes
    assert manager.clear_profile(**criteria) == "Accepted"
    assert [p.id for p in manager.profiles()] == left
    assert station.changes == before + 1


@pytest.mark.parametrize("criteria", [{"id": 99}, {"connector_id": 2}, {"purpose": "TxProfile", "stack_level": 0}])
def test_clear_without_a_match_answers_unknown(station: Station, criteria: dict[str, Any]) -> None:
    manager = installed(station)
    assert manager.clear_profile(**criteria) == "Unknown"
    assert len(manager.profiles()) == 5


def test_clear_on_an_empty_charger_is_unknown(station: Station) -> None:
    assert station.manager().clear_profile() == "Unknown"


# ---------------------------------------------------------------------- GetCompositeSchedule


def test_composite_tx_over_default_capped_by_charge_point_max(station: Station) -> None:
    station.transactions[1] = TxInfo(42, NOW)
    manager = station.manager()
    assert manager.set_profile(0, profile(1, "TxDefaultProfile", [6])) == "Accepted"
    assert limits(manager) == [(0, 6.0)]
    assert manager.set_profile(1, profile(2, "TxProfile", [20, 10])) == "Accepted"
    assert limits(manager) == [(0, 20.0), (600, 10.0)]
    assert manager.set_profile(0, profile(3, "ChargePointMaxProfile", [16])) == "Accepted"
    assert limits(manager) == [(0, 16.0), (600, 10.0)]
    conf = manager.composite(1, 3600, "W", NOW)
    assert conf is not None and conf["chargingSchedule"]["chargingSchedulePeriod"] == [
        {"startPeriod": 0, "limit": 11040.0, "numberPhases": 3},
        {"startPeriod": 600, "limit": 6900.0, "numberPhases": 3}]


def test_composite_without_profiles_reports_the_connector_maximum(station: Station) -> None:
    manager = station.manager()
    conf = manager.composite(2, 900, None, NOW)
    assert conf == {"status": "Accepted", "connectorId": 2, "scheduleStart": "2026-11-24T10:00:00Z",
                    "chargingSchedule": {"duration": 900, "chargingRateUnit": "A", "chargingSchedulePeriod": [
                        {"startPeriod": 0, "limit": 16.0, "numberPhases": 1}]}}
    assert limits(manager, 0) == [(0, 48.0)]  # connector 0: the connectors' maxima together


def test_composite_for_an_unknown_connector_is_rejected(station: Station) -> None:
    assert station.manager().composite(5, 600, "A", NOW) is None


def test_composite_longer_than_a_month_is_cut_to_a_month(station: Station) -> None:
    conf = station.manager().composite(1, 40 * 86_400, "A", NOW)
    assert conf is not None and conf["chargingSchedule"]["duration"] == MAX_COMPOSITE_DURATION_S


def test_composite_defaults_to_power_when_only_power_is_allowed(station: Station) -> None:
    station.config["ChargingScheduleAllowedChargingRateUnit"] = ["Power"]
    conf = station.manager().composite(1, 60, None, NOW)
    assert conf is not None and conf["chargingSchedule"]["chargingRateUnit"] == "W"


# ---------------------------------------------------------------------- enforcement


def test_current_limit_and_next_change_follow_the_schedule(station: Station) -> None:
    station.transactions[1] = TxInfo(42, NOW - timedelta(minutes=5))
    manager = station.manager()
    assert manager.current_limit_a(1) == (None, "none")
    assert manager.next_change_at(1) is None
    assert manager.set_profile(1, profile(9, "TxProfile", [20, 10, 6])) == "Accepted"
    assert manager.current_limit_a(1) == (20.0, "TxProfile#9")
    assert manager.next_change_at(1) == NOW + timedelta(minutes=5)
    station.now = NOW + timedelta(minutes=5)
    assert manager.current_limit_a(1) == (10.0, "TxProfile#9")
    assert manager.next_change_at(1) == NOW + timedelta(minutes=15)


def test_charge_point_max_is_shared_by_the_connectors_charging_3_13_3(station: Station) -> None:
    station.transactions[1] = TxInfo(42, NOW)
    manager = station.manager()
    assert manager.set_profile(0, profile(1, "ChargePointMaxProfile", [20])) == "Accepted"
    assert manager.current_limit_a(1) == (20.0, "ChargePointMaxProfile#1")
    # A connector about to start counts itself: it will share with connector 1.
    assert manager.current_limit_a(2) == (10.0, "ChargePointMaxProfile#1")
    station.transactions[2] = TxInfo(43, NOW)
    manager.on_transaction_started(2)
    assert manager.current_limit_a(1) == (10.0, "ChargePointMaxProfile#1")


def test_power_profile_is_enforced_in_amps_on_the_connector_phases(station: Station) -> None:
    station.transactions[2] = TxInfo(43, NOW)
    manager = station.manager()
    assert manager.set_profile(2, profile(1, "TxProfile", [3680], unit="W")) == "Accepted"
    assert manager.current_limit_a(2) == (16.0, "TxProfile#1")  # connector 2 is single phase


# ---------------------------------------------------------------------- transactions


def test_transaction_end_removes_its_tx_profiles_and_keeps_defaults_7_10(station: Station) -> None:
    manager = installed(station)
    before = station.changes
    del station.transactions[1]
    manager.on_transaction_ended(1, 42)
    assert [p.id for p in manager.profiles()] == [1, 2, 3, 4]
    assert station.changes == before + 1


def test_remote_start_profile_must_be_a_tx_profile_without_transaction_id_5_11_errata_3_41(station: Station) -> None:
    manager = station.manager()
    assert manager.remote_start_profile(1, profile(1, "TxDefaultProfile")) == "Rejected"
    assert manager.remote_start_profile(1, profile(1, "TxProfile", transaction_id=5)) == "Rejected"
    assert manager.remote_start_profile(1, profile(1, "TxProfile", stack=9)) == "Rejected"
    assert manager.remote_start_profile(0, profile(1, "TxProfile")) == "Rejected"
    assert manager.remote_start_profile(1, profile(1, "TxProfile", [7])) == "Accepted"
    assert manager.profiles() == []  # held until the transaction starts


def test_remote_start_profile_applies_to_the_new_transaction_errata_3_42(station: Station) -> None:
    repository = InMemoryProfileRepository()
    manager = station.manager(repository)
    assert manager.remote_start_profile(1, profile(1, "TxProfile", [7], stack=2)) == "Accepted"
    station.transactions[1] = TxInfo(42, NOW)
    manager.on_transaction_started(1)
    assert manager.current_limit_a(1) == (7.0, "TxProfile#1")
    assert list(repository.docs) == [1]
    # SetChargingProfile for this transaction at the same stack level replaces it.
    assert manager.set_profile(1, profile(2, "TxProfile", [9], stack=2, transaction_id=42)) == "Accepted"
    assert [p.id for p in manager.profiles()] == [2]


def test_a_new_transaction_drops_stale_tx_profiles(station: Station) -> None:
    repository = InMemoryProfileRepository()
    station.transactions[1] = TxInfo(41, NOW - timedelta(hours=1))
    manager = station.manager(repository)
    assert manager.set_profile(1, profile(1, "TxProfile", [7])) == "Accepted"
    # Power cut: the end of transaction 41 was never reported; a new transaction starts.
    station.transactions[1] = TxInfo(42, NOW)
    manager = station.manager(repository)
    manager.on_transaction_started(1)
    assert manager.profiles() == [] and repository.docs == {}
    assert manager.current_limit_a(1) == (None, "none")


def test_a_failing_listener_does_not_undo_the_change(station: Station) -> None:
    manager = station.manager()

    def broken() -> None:
        raise RuntimeError("enforcer crashed")

    manager.add_listener(broken)
    assert manager.set_profile(0, profile(1)) == "Accepted"
    assert [p.id for p in manager.profiles()] == [1]


# ---------------------------------------------------------------------- persistence (errata 3.37)


def test_profiles_survive_a_restart_through_the_sqlite_store(station: Station, tmp_path: Path) -> None:
    station.transactions[1] = TxInfo(42, NOW - timedelta(minutes=5))
    with Store(tmp_path) as store:
        manager = station.manager(store.profiles)
        assert manager.set_profile(0, profile(1, "ChargePointMaxProfile", [24.6], kind="Absolute",
                                              start=NOW - timedelta(days=1))) == "Accepted"
        assert manager.set_profile(0, profile(2, "TxDefaultProfile", [6, 16], step_s=900)) == "Accepted"
        assert manager.set_profile(1, profile(3, "TxProfile", [20, 12.3], stack=1, duration=3000)) == "Accepted"
        assert manager.set_profile(1, profile(4, "TxDefaultProfile", [8], stack=0)) == "Accepted"
        assert manager.clear_profile(id=4) == "Accepted"
        before = [limits(manager, c, 7200, u) for c in (0, 1, 2) for u in UNITS]
        snapshot = manager.profiles()
    with Store(tmp_path) as store:
        reloaded = station.manager(store.profiles)
        assert reloaded.profiles() == snapshot
        assert [limits(reloaded, c, 7200, u) for c in (0, 1, 2) for u in UNITS] == before
    # Connector 1: TxProfile (transaction began 300 s ago), then the station TxDefault in its second period.
    assert before[2] == [(0, 20.0), (300, 12.3), (2700, 16.0)]


def test_a_damaged_stored_profile_is_skipped(station: Station) -> None:
    repository = InMemoryProfileRepository()
    good = station.manager(repository)
    assert good.set_profile(0, profile(1)) == "Accepted"
    damaged = copy.deepcopy(repository.docs[1])
    damaged["chargingProfileId"] = 2
    damaged["csChargingProfiles"]["chargingProfileId"] = 2
    damaged["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"] = []
    repository.save(damaged)
    assert [p.id for p in station.manager(repository).profiles()] == [1]


@pytest.mark.parametrize("profile_id", [2**63, -(2**63) - 1, 10**30])
def test_a_profile_id_beyond_the_stores_64_bit_key_is_rejected_not_a_crash(station: Station, tmp_path: Path,
                                                                          profile_id: int) -> None:
    """chargingProfileId is an unbounded JSON integer: SetChargingProfile(2**63) raised
    OverflowError from the SQLite write (answered InternalError; found by the schema fuzz,
    tests/e2e/test_fuzz_actions.py), and a RemoteStartTransaction profile with such an id
    was held, to fail once the transaction started."""
    with Store(tmp_path / "state") as store:
        manager = station.manager(store.profiles)
        assert manager.set_profile(1, profile(profile_id)) == "Rejected"
        assert manager.remote_start_profile(1, profile(profile_id, "TxProfile")) == "Rejected"
        assert manager.set_profile(1, profile(2**63 - 1)) == "Accepted"      # the largest that fits
        assert [p.id for p in manager.profiles()] == [2**63 - 1]
        assert [p["chargingProfileId"] for p in store.profiles.load_all()] == [2**63 - 1]
