"""Local Authorization List management end to end: SendLocalList and GetLocalListVersion.

In-process charger against the strict bundled central system.
OCPP 1.6 §3.5.2, §5.10, §5.15, §6.41, §7.1, §7.47, errata 3.52; §9.2 LocalAuthListEnabled,
LocalAuthListMaxLength (1000 here), SendLocalListMaxLength (250 here).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chargepoint.app import ChargePointApp
from tests.support.harness import CP_ID, ChargerEnv, charger_env

pytestmark = pytest.mark.asyncio

WAIT_S = 15.0


@contextlib.asynccontextmanager
async def running(env: ChargerEnv) -> AsyncIterator[ChargePointApp]:
    start = len(env.csms.received)
    async with env.app() as app:
        await env.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1, after_index=start,
                                timeout_s=20)
        yield app


async def call(env: ChargerEnv, action: str, payload: dict[str, Any]) -> dict[str, Any]:
    return await env.csms.call(CP_ID, action, payload, timeout_s=WAIT_S)


async def version(env: ChargerEnv) -> int:
    answer = await call(env, "GetLocalListVersion", {})
    value: int = answer["listVersion"]
    return value


def entry(id_tag: str, status: str | None = "Accepted", **info: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"idTag": id_tag}
    if status is not None:
        item["idTagInfo"] = {"status": status, **info}
    return item


async def send(env: ChargerEnv, update_type: str, list_version: int, entries: list[dict[str, Any]] | None) -> str:
    payload: dict[str, Any] = {"listVersion": list_version, "updateType": update_type}
    if entries is not None:
        payload["localAuthorizationList"] = entries
    answer = await call(env, "SendLocalList", payload)
    status: str = answer["status"]
    return status


def listed(app: ChargePointApp) -> dict[str, str]:
    return {tag: info["status"] for tag, info in app.store.local_list.entries().items()}


# --------------------------------------------------------------------------- full and differential


async def test_full_then_differential_updates_and_version_5_15(tmp_path: Path) -> None:
    """§5.10 / §5.15 / §7.1: version 0 while empty; Full replaces; Differential adds, updates
    (idTagInfo present) and removes (absent); an empty Full list empties it (version 0)."""
    async with charger_env(tmp_path) as env, running(env) as app:
        assert await version(env) == 0
        assert await send(env, "Full", 5, [entry("A"), entry("B", "Blocked"), entry("C")]) == "Accepted"
        assert await version(env) == 5
        assert listed(app) == {"A": "Accepted", "B": "Blocked", "C": "Accepted"}

        assert await send(env, "Differential", 6, [entry("B"), entry("C", None), entry("D", "Expired")]) == \
            "Accepted"
        assert await version(env) == 6
        assert listed(app) == {"A": "Accepted", "B": "Accepted", "D": "Expired"}

        # A Differential without entries only moves the version (§6.41).
        assert await send(env, "Differential", 7, None) == "Accepted"
        assert await version(env) == 7 and len(listed(app)) == 3

        assert await send(env, "Full", 8, []) == "Accepted"
        assert listed(app) == {} and await version(env) == 0
        assert (await env.astatus())["local_list"] == {"enabled": True, "version": 0, "entries": 0}
    env.csms.assert_no_violations()


async def test_differential_not_above_the_version_is_a_mismatch_7_47(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env, running(env) as app:
        assert await send(env, "Full", 10, [entry("A")]) == "Accepted"
        assert await send(env, "Differential", 10, [entry("B")]) == "VersionMismatch"
        assert await send(env, "Differential", 9, [entry("B")]) == "VersionMismatch"
        assert listed(app) == {"A": "Accepted"} and await version(env) == 10
        # A Full update may go to any version (it replaces the list).
        assert await send(env, "Full", 3, [entry("B")]) == "Accepted"
        assert await version(env) == 3
    env.csms.assert_no_violations()


async def test_failed_updates_leave_the_list_whole_errata_3_52(tmp_path: Path) -> None:
    """Failed: listVersion 0 or -1 (errata 3.52), an idTag twice (§6.41, case-insensitive §7.28),
    a Full entry without idTagInfo (§7.1), more than SendLocalListMaxLength entries (§9.2.3);
    nothing of a refused update is applied."""
    async with charger_env(tmp_path) as env, running(env) as app:
        assert await send(env, "Full", 1, [entry("A")]) == "Accepted"
        assert await send(env, "Full", 0, [entry("B")]) == "Failed"
        assert await send(env, "Differential", -1, [entry("B")]) == "Failed"
        assert await send(env, "Full", 2, [entry("B"), entry("b", "Blocked")]) == "Failed"
        assert await send(env, "Differential", 2, [entry("B"), entry("B", None)]) == "Failed"
        assert await send(env, "Full", 2, [entry("B"), entry("C", None)]) == "Failed"
        too_many = [entry(f"T{i}") for i in range(251)]
        assert await send(env, "Full", 2, too_many) == "Failed"
        assert listed(app) == {"A": "Accepted"} and await version(env) == 1
    env.csms.assert_no_violations()


async def test_list_longer_than_local_auth_list_max_length_fails_9_2_2(tmp_path: Path) -> None:
    """§9.2.2: the list holds at most LocalAuthListMaxLength (1000) entries; an update past it
    fails whole; removing in the same update keeps it within bounds."""
    async with charger_env(tmp_path) as env, running(env) as app:
        assert await send(env, "Full", 1, [entry(f"T{i}") for i in range(250)]) == "Accepted"
        for n in range(1, 4):
            batch = [entry(f"T{n * 250 + i}") for i in range(250)]
            assert await send(env, "Differential", 1 + n, batch) == "Accepted"
        assert app.store.local_list.count() == 1000
        assert await send(env, "Differential", 5, [entry("ONE-MORE")]) == "Failed"
        assert app.store.local_list.count() == 1000 and await version(env) == 4
        assert await send(env, "Differential", 5, [entry("T0", None), entry("ONE-MORE")]) == "Accepted"
        assert app.store.local_list.count() == 1000 and "ONE-MORE" in listed(app)
    env.csms.assert_no_violations()


async def test_differential_addresses_an_entry_whatever_its_case_7_28(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env, running(env) as app:
        assert await send(env, "Full", 1, [entry("AbC"), entry("xyz")]) == "Accepted"
        assert await send(env, "Differential", 2, [entry("abc", "Blocked"), entry("XYZ", None)]) == "Accepted"
        assert listed(app) == {"AbC": "Blocked"}
    env.csms.assert_no_violations()


# --------------------------------------------------------------------------- enabled, persistence, use


async def test_disabled_list_is_not_supported_and_reports_minus_one_5_10(tmp_path: Path) -> None:
    """§5.10 / §7.47 with LocalAuthListEnabled false: SendLocalList NotSupported and
    GetLocalListVersion -1; the stored list comes back when it is enabled again."""
    async with charger_env(tmp_path) as env, running(env) as app:
        assert await send(env, "Full", 4, [entry("A")]) == "Accepted"
        assert await call(env, "ChangeConfiguration", {"key": "LocalAuthListEnabled", "value": "false"}) == \
            {"status": "Accepted"}
        assert await version(env) == -1
        assert await send(env, "Full", 5, [entry("B")]) == "NotSupported"
        assert listed(app) == {"A": "Accepted"}
        assert await call(env, "ChangeConfiguration", {"key": "LocalAuthListEnabled", "value": "true"}) == \
            {"status": "Accepted"}
        assert await version(env) == 4
    env.csms.assert_no_violations()


async def test_list_and_version_survive_a_restart_3_5_2(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        async with running(env):
            assert await send(env, "Full", 12, [entry("A"), entry("B", "Invalid")]) == "Accepted"
        async with running(env) as app:
            assert await version(env) == 12
            assert listed(app) == {"A": "Accepted", "B": "Invalid"}
    env.csms.assert_no_violations()


async def test_listed_card_starts_without_authorize_when_local_pre_authorize_3_5_2(tmp_path: Path) -> None:
    """The list is the central system's word: with LocalPreAuthorize a listed card starts at once
    (§9.1.13) and a card the list blocks is refused without asking."""
    async with charger_env(tmp_path, LocalPreAuthorize=True) as env, running(env):
        assert await send(env, "Full", 1, [entry("LISTED"), entry("BLOCKED", "Blocked")]) == "Accepted"
        await env.asim("sim.plug", connector=1)
        await env.asim("sim.swipe", id_tag="BLOCKED", connector=1)
        await env.asim("sim.swipe", id_tag="LISTED", connector=1)
        start = await env.csms.wait_for("StartTransaction", timeout_s=WAIT_S)
        assert start.payload["idTag"] == "LISTED"
        assert env.csms.received_of("Authorize") == []
    env.csms.assert_no_violations()
