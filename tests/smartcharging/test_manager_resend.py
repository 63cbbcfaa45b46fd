"""SetChargingProfile sent again unchanged (central systems re-send their default profiles on
every reconnect): Accepted, but the installed set did not change, so the enforcer is not told
to re-evaluate, and the store, which already holds that very profile durably (errata 3.37), is
not written again. Any real difference is a change (OCPP 1.6 §5.16.3), saved before Accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chargepoint.smartcharging.model import from_json
from chargepoint.store import Store
from tests.smartcharging.test_manager import Station, profile


class CountingRepository:
    """The real store's profile repository, counting the writes that reach it."""

    def __init__(self, store: Store) -> None:
        self._repo = store.profiles
        self.saves = 0
        self.deletes = 0

    def load_all(self) -> list[dict[str, Any]]:
        return self._repo.load_all()

    def save(self, profile_json: dict[str, Any]) -> None:
        self.saves += 1
        self._repo.save(profile_json)

    def delete(self, profile_id: int) -> None:
        self.deletes += 1
        self._repo.delete(profile_id)


def test_an_identical_profile_is_accepted_without_a_write_or_waking_the_enforcer_5_16_3(tmp_path: Path) -> None:
    station = Station()
    store = Store(tmp_path)
    try:
        repository = CountingRepository(store)
        manager = station.manager(repository)
        doc = profile(7, limits=[16.0, 10.0])
        assert manager.set_profile(1, doc) == "Accepted"
        assert (station.changes, repository.saves) == (1, 1)
        assert manager.set_profile(1, profile(7, limits=[16.0, 10.0])) == "Accepted"
        assert station.changes == 1                      # nothing to re-evaluate
        assert repository.saves == 1                     # nothing to write: already stored
        assert [p.id for p in manager.profiles()] == [7]
        stored = store.profiles.load_all()               # durably there all the same
        assert [from_json(d) for d in stored] == manager.profiles()
    finally:
        store.close()


def test_after_a_restart_the_resent_profile_is_the_stored_one_and_not_written_again_errata_3_37(
        tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        assert Station().manager(store.profiles).set_profile(1, profile(7, limits=[16.0])) == "Accepted"
    finally:
        store.close()
    store = Store(tmp_path)   # what a reboot finds
    try:
        station = Station()
        repository = CountingRepository(store)
        manager = station.manager(repository)
        assert manager.set_profile(1, profile(7, limits=[16.0])) == "Accepted"
        assert (station.changes, repository.saves, repository.deletes) == (0, 0, 0)
        # A difference after the restart is a change again, written before it is Accepted.
        assert manager.set_profile(1, profile(7, limits=[13.0])) == "Accepted"
        assert (station.changes, repository.saves) == (1, 1)
        assert [from_json(d).schedule.periods[0].limit for d in store.profiles.load_all()] == [13.0]
    finally:
        store.close()


def test_a_resent_profile_is_still_checked_against_the_current_configuration_5_16_3(tmp_path: Path) -> None:
    station = Station()
    store = Store(tmp_path)
    try:
        manager = station.manager(store.profiles)
        assert manager.set_profile(1, profile(7, limits=[16.0], stack=3)) == "Accepted"
        station.config["ChargeProfileMaxStackLevel"] = 2
        # The limit is lower now: the same profile is Rejected (not "unchanged"); the installed one stays.
        assert manager.set_profile(1, profile(7, limits=[16.0], stack=3)) == "Rejected"
        assert [p.stack_level for p in manager.profiles()] == [3]
    finally:
        store.close()


def test_any_difference_is_a_change_limit_connector_or_a_replaced_sibling_5_16_3(tmp_path: Path) -> None:
    station = Station()
    store = Store(tmp_path)
    try:
        manager = station.manager(store.profiles)
        assert manager.set_profile(1, profile(7, limits=[16.0])) == "Accepted"
        assert manager.set_profile(1, profile(7, limits=[12.0])) == "Accepted"     # another limit
        assert station.changes == 2
        limit = manager.current_limit(1)
        assert limit is not None and limit.current_a == 12.0
        assert manager.set_profile(2, profile(7, limits=[12.0])) == "Accepted"     # same id, other connector
        assert station.changes == 3
        # Same purpose and stackLevel, another id: replaces profile 7 (§5.16.3), a change.
        assert manager.set_profile(2, profile(8, limits=[12.0])) == "Accepted"
        assert station.changes == 4
        assert [p.id for p in manager.profiles()] == [8]
        reloaded = Station().manager(store.profiles)    # what a restart finds (errata 3.37)
        assert [(p.id, p.connector_id) for p in reloaded.profiles()] == [(8, 2)]
    finally:
        store.close()
