"""Authorization: the decision table (pure) and the service against the bundled central system.

OCPP 1.6 §3.5 (local authorization & offline), §3.5.1 cache, §3.5.3 list before cache,
§3.5.4 unknown offline authorization, §3.10 parentIdTag groups, §4.1 Authorize,
§5.4 ClearCache (errata 3.23), §9.1.12 LocalAuthorizeOffline, §9.1.13 LocalPreAuthorize.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chargepoint.services.authorization import (
    AuthSettings,
    Decision,
    LocalEntry,
    decide,
    effective_info,
    local_entry,
    same_group,
)
from tests.support.harness import CP_ID, ChargerEnv, charger_env

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
PAST = "2026-11-24T09:59:59.000Z"
FUTURE = "2026-11-25T10:00:00.000Z"

ACCEPTED = {"status": "Accepted"}


def entry(status: str, source: str = "cache") -> LocalEntry:
    return LocalEntry({"status": status}, source)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- decision table


@pytest.mark.parametrize(
    ("case", "local", "settings", "expected"),
    [
        ("online, unknown: ask the central system (§4.1)",
         None, AuthSettings(), Decision("ask_central")),
        ("online, cached Accepted, LocalPreAuthorize false: ask (§9.1.13)",
         entry("Accepted"), AuthSettings(local_pre_authorize=False), Decision("ask_central")),
        ("online, cached Accepted, LocalPreAuthorize true: start at once (§9.1.13)",
         entry("Accepted"), AuthSettings(local_pre_authorize=True), Decision("use_local", ACCEPTED)),
        ("online, cached NOT-valid, LocalPreAuthorize true: re-check online (§3.5.1)",
         entry("Blocked"), AuthSettings(local_pre_authorize=True), Decision("ask_central")),
        ("online, local list Blocked, LocalPreAuthorize true: the list's word (§3.5.2)",
         entry("Blocked", "local_list"), AuthSettings(local_pre_authorize=True),
         Decision("use_local", {"status": "Blocked"})),
    ],
)
def test_online_decision_table(case: str, local: LocalEntry | None, settings: AuthSettings,
                               expected: Decision) -> None:
    assert decide(local, online=True, settings=settings) == expected, case


@pytest.mark.parametrize(
    ("case", "local", "settings", "expected"),
    [
        ("offline, list Accepted, LocalAuthorizeOffline: accept (§9.1.12)",
         entry("Accepted", "local_list"), AuthSettings(local_authorize_offline=True),
         Decision("use_local", ACCEPTED)),
        ("offline, cache Accepted, LocalAuthorizeOffline: accept (§3.5.1)",
         entry("Accepted"), AuthSettings(local_authorize_offline=True), Decision("use_local", ACCEPTED)),
        ("offline, cache Accepted, LocalAuthorizeOffline false: unknown rules, refused",
         entry("Accepted"), AuthSettings(local_authorize_offline=False), Decision("refuse", {"status": "Invalid"})),
        ("offline, list Blocked, AllowOfflineTxForUnknownId: still refused (§3.5.4 MUST)",
         entry("Blocked", "local_list"), AuthSettings(allow_offline_tx_for_unknown_id=True),
         Decision("refuse", {"status": "Blocked"})),
        ("offline, cache Expired: refused (§3.5.4)",
         entry("Expired"), AuthSettings(allow_offline_tx_for_unknown_id=True),
         Decision("refuse", {"status": "Expired"})),
        ("offline, unknown, AllowOfflineTxForUnknownId: accepted (§3.5.4)",
         None, AuthSettings(allow_offline_tx_for_unknown_id=True), Decision("accept_unknown", ACCEPTED)),
        ("offline, unknown, AllowOfflineTxForUnknownId but never Accepted: refused (§4.2.1)",
         None, AuthSettings(allow_offline_tx_for_unknown_id=True, ever_accepted=False),
         Decision("refuse", {"status": "Invalid"})),
        ("offline, unknown, AllowOfflineTxForUnknownId false: Invalid",
         None, AuthSettings(allow_offline_tx_for_unknown_id=False), Decision("refuse", {"status": "Invalid"})),
    ],
)
def test_offline_decision_table(case: str, local: LocalEntry | None, settings: AuthSettings,
                                expected: Decision) -> None:
    assert decide(local, online=False, settings=settings) == expected, case


def test_local_list_has_priority_over_the_cache_3_5_3() -> None:
    found = local_entry({"status": "Blocked"}, {"status": "Accepted"}, AuthSettings(), NOW)
    assert found == LocalEntry({"status": "Blocked"}, "local_list")


def test_disabled_local_list_falls_back_to_the_cache() -> None:
    found = local_entry({"status": "Blocked"}, {"status": "Accepted"}, AuthSettings(local_list_enabled=False), NOW)
    assert found == LocalEntry({"status": "Accepted"}, "cache")


def test_disabled_cache_is_not_consulted() -> None:
    settings = AuthSettings(local_list_enabled=False, cache_enabled=False)
    assert local_entry({"status": "Accepted"}, {"status": "Accepted"}, settings, NOW) is None
    assert local_entry(None, {"status": "Accepted"}, AuthSettings(cache_enabled=False), NOW) is None


def test_expired_accepted_entry_counts_as_expired_3_5_1() -> None:
    info, expired = effective_info({"status": "Accepted", "expiryDate": PAST, "parentIdTag": "P"}, NOW)
    assert expired and info == {"status": "Expired", "expiryDate": PAST, "parentIdTag": "P"}
    found = local_entry(None, {"status": "Accepted", "expiryDate": PAST}, AuthSettings(), NOW)
    assert found is not None and found.expired_now and not found.accepted


@pytest.mark.parametrize(
    ("info", "now"),
    [
        ({"status": "Accepted", "expiryDate": FUTURE}, NOW),   # still valid
        ({"status": "Accepted", "expiryDate": PAST}, None),    # no synchronised clock: cannot tell
        ({"status": "Blocked", "expiryDate": PAST}, NOW),      # not Accepted: unchanged
        ({"status": "Accepted"}, NOW),                         # no expiryDate: no end date (§7.27)
    ],
)
def test_entries_that_do_not_expire(info: dict[str, Any], now: datetime | None) -> None:
    assert effective_info(info, now) == (info, False)


@pytest.mark.parametrize(
    ("a", "parent_a", "b", "parent_b", "same"),
    [
        ("TAG1", None, "tag1", None, True),            # idTags are case-insensitive (§7.28)
        ("TAG1", "FAMILY", "TAG2", "family", True),    # same parentIdTag group (§3.10)
        ("TAG1", "FAMILY", "TAG2", "OTHER", False),
        ("TAG1", None, "TAG2", None, False),           # no parent known: only the same tag
        ("TAG1", "", "TAG2", "", False),
        ("TAG1", "FAMILY", "TAG2", None, False),
    ],
)
def test_same_group_3_10(a: str, parent_a: str | None, b: str, parent_b: str | None, same: bool) -> None:
    assert same_group(a, parent_a, b, parent_b) is same


# --------------------------------------------------------------------------- the service


async def authorize_count(env: ChargerEnv) -> int:
    return sum(1 for r in env.csms.received if r.action == "Authorize")


@pytest.mark.asyncio
async def test_authorize_conf_fills_the_cache_but_not_for_listed_tags(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        env.csms.authorize["CARD1"] = {"status": "Accepted", "parentIdTag": "FAMILY"}
        env.csms.authorize["LISTED"] = "Accepted"
        async with env.app() as app:
            await env.csms.wait_for("StatusNotification", timeout_s=20)
            assert app.store.local_list.apply("Full", 1, [{"idTag": "LISTED", "idTagInfo": {"status": "Blocked"}}],
                                              100) == "Accepted"
            result = await app.auth.check("CARD1")
            assert result.accepted and result.source == "central" and result.parent_id_tag == "FAMILY"
            assert app.store.auth_cache.get("CARD1") == {"status": "Accepted", "parentIdTag": "FAMILY"}
            # §3.5.3: identifiers in the local list are never added to the cache.
            listed = await app.auth.check("LISTED")
            assert listed.source == "central" and listed.accepted
            assert app.store.auth_cache.get("LISTED") is None
            assert await authorize_count(env) == 2
        env.csms.assert_no_violations()


@pytest.mark.asyncio
async def test_local_pre_authorize_starts_from_the_cache_without_authorize(tmp_path: Path) -> None:
    async with charger_env(tmp_path, LocalPreAuthorize=True) as env:
        async with env.app() as app:
            await env.csms.wait_for("StatusNotification", timeout_s=20)
            app.store.auth_cache.upsert("CACHED", {"status": "Accepted"})
            app.store.auth_cache.upsert("BLOCKED", {"status": "Blocked"})
            result = await app.auth.check("CACHED")
            assert result.accepted and result.source == "cache"
            assert await authorize_count(env) == 0
            # A NOT-valid cache entry is checked online (§3.5.1): the central system now accepts it.
            again = await app.auth.check("BLOCKED")
            assert again.accepted and again.source == "central"
            assert await authorize_count(env) == 1
            assert app.store.auth_cache.get("BLOCKED") == {"status": "Accepted"}
        env.csms.assert_no_violations()


@pytest.mark.asyncio
async def test_expired_cache_entry_is_rewritten_expired_and_refused_offline(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        async with env.app() as app:
            await env.csms.wait_for("StatusNotification", timeout_s=20)
            past = app.clock.iso8601(app.clock.now() - timedelta(minutes=1))
            app.store.auth_cache.upsert("OLD", {"status": "Accepted", "expiryDate": past})
            found = app.auth.lookup("OLD")
            assert found is not None and found.info["status"] == "Expired"
            # §3.5.1: "it SHALL be changed to expired in the Cache".
            assert app.store.auth_cache.get("OLD") == {"status": "Expired", "expiryDate": past}
            await env.csms.stop()
            await env.csms.wait_disconnected(CP_ID)
            result = await app.auth.check("OLD")
            assert not result.accepted and result.info["status"] == "Expired"
        assert await authorize_count(env) == 0


@pytest.mark.asyncio
async def test_parent_id_tag_is_remembered_with_the_cache_disabled(tmp_path: Path) -> None:
    async with charger_env(tmp_path, AuthorizationCacheEnabled=False) as env:
        env.csms.authorize["A"] = {"status": "Accepted", "parentIdTag": "FAMILY"}
        env.csms.authorize["B"] = {"status": "Accepted", "parentIdTag": "FAMILY"}
        async with env.app() as app:
            await env.csms.wait_for("StatusNotification", timeout_s=20)
            await app.auth.check("A")
            await app.auth.check("B")
            assert app.store.auth_cache.count() == 0
            assert app.auth.same_group("A", "B")
            assert not app.auth.same_group("A", "C")
        env.csms.assert_no_violations()


@pytest.mark.asyncio
async def test_clear_cache_accepted_and_empties_the_cache_5_4(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        async with env.app() as app:
            await env.csms.wait_for("StatusNotification", timeout_s=20)
            await app.auth.check("CARD1")
            assert app.store.auth_cache.count() == 1
            conf = await env.csms.call(CP_ID, "ClearCache", {})
            assert conf == {"status": "Accepted"}
            assert app.store.auth_cache.count() == 0
        env.csms.assert_no_violations()


@pytest.mark.asyncio
async def test_local_list_start_conflict_is_reported_on_connector_0_3_5_2(tmp_path: Path) -> None:
    """LocalPreAuthorize with a listed card: started without Authorize.req (§9.1.13); the
    StartTransaction.conf disagrees with the list -> StatusNotification(0, LocalListConflict)
    (§3.5.2), and the transaction is stopped DeAuthorized (errata 3.17)."""
    async with charger_env(tmp_path, LocalPreAuthorize=True, StopTransactionOnInvalidId=True) as env:
        env.csms.start_status["LISTED"] = "Blocked"
        async with env.app() as app:
            await env.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1, timeout_s=20)
            assert app.store.local_list.apply("Full", 3, [{"idTag": "LISTED", "idTagInfo": {"status": "Accepted"}}],
                                              100) == "Accepted"
            await env.asim("sim.plug", connector=1)
            await env.asim("sim.swipe", id_tag="LISTED", connector=1)
            start = await env.csms.wait_for("StartTransaction", timeout_s=15)
            conflict = await env.csms.wait_for(
                "StatusNotification", lambda p: p["connectorId"] == 0 and p["errorCode"] == "LocalListConflict",
                after_index=start.index, timeout_s=15)
            assert conflict.payload["status"] == "Available"
            stop = await env.csms.wait_for("StopTransaction", timeout_s=15)
            assert stop.payload["reason"] == "DeAuthorized"
            assert await authorize_count(env) == 0
            assert app.store.auth_cache.get("LISTED") is None   # §3.5.3: listed tags are not cached
        env.csms.assert_no_violations()


@pytest.mark.asyncio
async def test_an_id_tag_with_line_breaks_stays_on_one_log_line(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """An idTag is peer data (CiString20 allows any character): logged raw, a CR/LF in it
    forged a log line ("idTag A\r\nINFO forged: Accepted"); docs/ARCHITECTURE.md: one line
    per event. Found by the schema fuzz (tests/e2e/test_fuzz_actions.py, RemoteStartTransaction)."""
    caplog.set_level(logging.INFO, logger="chargepoint.auth")
    tag = "A\r\nINFO forged\u2028"
    async with charger_env(tmp_path) as env:
        async with env.app() as app:
            await env.csms.wait_for("StatusNotification", timeout_s=20)
            assert (await app.auth.check(tag)).accepted       # online: asked the central system
            await env.csms.stop()
            await env.csms.wait_disconnected(CP_ID)
            assert (await app.auth.check(tag)).accepted        # offline: from the cache
    lines = [r.getMessage() for r in caplog.records if r.name == "chargepoint.auth"]
    assert any(repr(tag) in line and "Accepted (central)" in line for line in lines), lines
    assert any(repr(tag) in line and "Accepted (cache)" in line for line in lines), lines
    assert not [line for line in lines if any(c in line for c in "\r\n\u2028")]
