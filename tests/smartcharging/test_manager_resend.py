"""SetChargingProfile sent again unchanged (central systems re-send their default profiles on
every reconnect): Accepted and stored again, but the installed set did not change, so the
enforcer is not told to re-evaluate. Any real difference is a change (OCPP 1.6 §5.16.3).
"""

from __future__ import annotations

from pathlib import Path

from chargepoint.store import Store
from tests.smartcharging.test_manager import Station, profile


def test_an_identical_profile_is_stored_again_without_waking_the_enforcer_5_16_3(tmp_path: Path) -> None:
    station = Station()
    store = Store(tmp_path)
    try:
        manager = station.manager(store.profiles)
        doc = profile(7, limits=[16.0, 10.0])
        assert manager.set_profile(1, doc) == "Accepted"
        assert station.changes == 1
        assert manager.set_profile(1, profile(7, limits=[16.0, 10.0])) == "Accepted"
        assert station.changes == 1                      # nothing to re-evaluate
        assert [p.id for p in manager.profiles()] == [7]
        assert len(store.profiles.load_all()) == 1       # still durably there
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
