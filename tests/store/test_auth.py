"""Authorization cache (OCPP 1.6 §3.5.1) and local list / SendLocalList (§3.5.2, §5.15, errata 3.52)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chargepoint.store import Store, apply_local_list

ACCEPTED = {"status": "Accepted", "expiryDate": "2027-01-01T00:00:00.000Z"}
BLOCKED = {"status": "Blocked"}


def _data(tag: str, info: dict[str, Any] | None = ACCEPTED) -> dict[str, Any]:
    return {"idTag": tag} if info is None else {"idTag": tag, "idTagInfo": info}


# -- apply_local_list (pure) -------------------------------------------------


def test_full_update_replaces_the_list_and_sets_the_version() -> None:
    status, version, entries = apply_local_list(3, {"OLD": ACCEPTED}, "Full", 10, [_data("A"), _data("B", BLOCKED)],
                                                max_length=10)
    assert (status, version) == ("Accepted", 10)
    assert entries == {"A": ACCEPTED, "B": BLOCKED}


def test_full_update_with_empty_list_clears_it() -> None:
    assert apply_local_list(3, {"OLD": ACCEPTED}, "Full", 4, [], max_length=10) == ("Accepted", 4, {})


def test_full_update_requires_id_tag_info_section_7_1() -> None:
    current = {"OLD": ACCEPTED}
    assert apply_local_list(3, current, "Full", 4, [_data("A", None)], max_length=10) == ("Failed", 3, current)


def test_differential_adds_updates_and_removes_entries_without_id_tag_info() -> None:
    current = {"A": ACCEPTED, "B": ACCEPTED, "C": ACCEPTED}
    status, version, entries = apply_local_list(
        5, current, "Differential", 6, [_data("A", BLOCKED), _data("B", None), _data("D")], max_length=10)
    assert (status, version) == ("Accepted", 6)
    assert entries == {"A": BLOCKED, "C": ACCEPTED, "D": ACCEPTED}
    assert current == {"A": ACCEPTED, "B": ACCEPTED, "C": ACCEPTED}  # input untouched


def test_differential_with_version_not_above_current_is_version_mismatch() -> None:
    current = {"A": ACCEPTED}
    for version in (5, 4):
        assert apply_local_list(5, current, "Differential", version, [_data("B")], 10) == ("VersionMismatch", 5,
                                                                                            current)


def test_list_version_zero_or_minus_one_is_refused_errata_3_52() -> None:
    for version in (0, -1):
        assert apply_local_list(0, {}, "Full", version, [_data("A")], 10)[0] == "Failed"


def test_update_that_exceeds_local_auth_list_max_length_fails_unchanged() -> None:
    current = {"A": ACCEPTED, "B": ACCEPTED}
    assert apply_local_list(1, current, "Differential", 2, [_data("C")], max_length=2) == ("Failed", 1, current)
    assert apply_local_list(1, current, "Full", 2, [_data(t) for t in "CDE"], max_length=2) == ("Failed", 1, current)
    # Removing as many as it adds stays within the limit.
    assert apply_local_list(1, current, "Differential", 2, [_data("A", None), _data("C")], 2)[0] == "Accepted"


def test_duplicate_id_tags_fail_section_6_41() -> None:
    assert apply_local_list(0, {}, "Full", 1, [_data("A"), _data("A", BLOCKED)], 10)[0] == "Failed"


# -- LocalListRepo -----------------------------------------------------------


def test_local_list_update_is_stored_and_survives_reopen(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        assert s.local_list.version() == 0
        assert s.local_list.apply("Full", 3, [_data("A"), _data("B", BLOCKED)], max_length=100) == "Accepted"
        assert s.local_list.apply("Differential", 4, [_data("A", None), _data("C")], max_length=100) == "Accepted"
        assert s.local_list.apply("Differential", 4, [_data("D")], max_length=100) == "VersionMismatch"
    with Store(tmp_path) as s:
        assert s.local_list.version() == 4
        assert s.local_list.entries() == {"B": BLOCKED, "C": ACCEPTED}
        assert s.local_list.get("C") == ACCEPTED and s.local_list.get("A") is None


def test_refused_local_list_update_changes_nothing(store: Store) -> None:
    assert store.local_list.apply("Full", 2, [_data("A"), _data("B")], max_length=2) == "Accepted"
    assert store.local_list.apply("Differential", 3, [_data("C")], max_length=2) == "Failed"
    assert store.local_list.version() == 2 and set(store.local_list.entries()) == {"A", "B"}


def test_emptied_local_list_reports_version_zero_section_5_10(store: Store) -> None:
    store.local_list.apply("Full", 2, [_data("A")], max_length=10)
    assert store.local_list.apply("Full", 3, [], max_length=10) == "Accepted"
    assert store.local_list.version() == 0 and store.local_list.entries() == {}


# -- AuthCacheRepo -----------------------------------------------------------


def test_cache_upsert_updates_existing_entry(store: Store) -> None:
    store.auth_cache.upsert("A", ACCEPTED)
    store.auth_cache.upsert("A", BLOCKED)
    assert store.auth_cache.get("A") == BLOCKED and store.auth_cache.count() == 1
    assert store.auth_cache.get("nobody") is None


def test_full_cache_evicts_not_valid_entries_first_then_oldest_valid(tmp_path: Path) -> None:
    with Store(tmp_path, auth_cache_cap=3) as s:
        s.auth_cache.upsert("valid-old", ACCEPTED)
        s.auth_cache.upsert("blocked", BLOCKED)
        s.auth_cache.upsert("valid-new", ACCEPTED)
        s.auth_cache.upsert("newcomer", ACCEPTED)  # over the cap: the NOT-valid entry goes
        assert set(s.auth_cache.items()) == {"valid-old", "valid-new", "newcomer"}
        s.auth_cache.upsert("valid-old", ACCEPTED)  # refreshed: now newest
        s.auth_cache.upsert("another", ACCEPTED)  # the oldest valid one goes
        assert set(s.auth_cache.items()) == {"valid-old", "newcomer", "another"}


def test_cache_clear_and_persistence(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        s.auth_cache.upsert("A", ACCEPTED)
    with Store(tmp_path) as s:
        assert s.auth_cache.get("A") == ACCEPTED  # persists across reboots (errata 3.4)
        s.auth_cache.clear()
        assert s.auth_cache.count() == 0
